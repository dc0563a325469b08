"""Run Seldon MLServer as a benchmark peer: build its model repository, start, stop.

Used by ``bench/bench_endpoint.py`` from the project's virtualenv; MLServer itself runs
from its own (``.venv-bench``, ``make bench-venv``, pins in ``requirements.txt`` and
``constraints.txt`` beside this file), as a subprocess listening on 127.0.0.1 on free
ports, with MLServer's defaults otherwise (one inference worker process,
``parallel_workers`` = 1).

>>> peer = MLServerPeer(REPO_ROOT / ".venv-bench", workdir)       # doctest: +SKIP
>>> peer.unavailable()          # None, or why the peer cannot run     # doctest: +SKIP
>>> peer.build(names, x, y)     # fits LinearRegression per model      # doctest: +SKIP
>>> with peer:                  # starts; waits until every model is READY
...     peer.infer_url(names[0])  # http://127.0.0.1:PORT/v2/models/NAME/infer
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BUILDER = HERE / "build_mlserver_repo.py"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the usual small race is acceptable here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class MLServerPeer:
    """MLServer serving one scikit-learn model per name (V2 inference protocol)."""

    def __init__(
        self,
        venv: Path,
        workdir: Path,
        host: str = "127.0.0.1",
        parallel_workers: int | None = None,
    ) -> None:
        self.venv = Path(venv)
        self.parallel_workers = parallel_workers
        self.workdir = Path(workdir)
        self.host = host
        self.repo = self.workdir / "repository"
        self.log_path = self.workdir / "mlserver.log"
        self.names: list[str] = []
        self.build_info: dict[str, Any] = {}
        self.startup_s: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._ports = {"http": 0, "grpc": 0, "metrics": 0}

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def executable(self) -> Path:
        return self.venv / "bin" / "mlserver"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self._ports['http']}"

    def infer_url(self, name: str) -> str:
        return f"{self.base_url}/v2/models/{name}/infer"

    def unavailable(self) -> str | None:
        """Why the peer cannot run here (None when it can)."""
        if not self.python.exists() or not self.executable.exists():
            return (
                f"{self.venv} is missing (or has no mlserver): `make bench-venv` creates it "
                "with the versions pinned in bench/peers/requirements.txt"
            )
        answer = subprocess.run(
            [
                str(self.python),
                "-c",
                "import mlserver, mlserver_sklearn; print(mlserver.__version__)",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if answer.returncode != 0:
            return f"{self.venv} cannot import mlserver: {answer.stderr.strip()[-300:]}"
        return None

    def build(self, names: list[str], x: Any, y: Any, check_row: list[float]) -> dict[str, Any]:
        """Write the repository: one LinearRegression per name, fitted on x[i], y[i]."""
        import numpy as np

        self.workdir.mkdir(parents=True, exist_ok=True)
        self._ports = {name: free_port(self.host) for name in self._ports}
        data = self.workdir / "models.npz"
        np.savez(data, names=np.array(names), x=np.asarray(x), y=np.asarray(y))
        answer = subprocess.run(
            [
                str(self.python),
                str(BUILDER),
                str(data),
                str(self.repo),
                "--host",
                self.host,
                "--http-port",
                str(self._ports["http"]),
                "--grpc-port",
                str(self._ports["grpc"]),
                "--metrics-port",
                str(self._ports["metrics"]),
                "--check-row",
                ",".join(repr(float(v)) for v in check_row),
                *(
                    ["--parallel-workers", str(self.parallel_workers)]
                    if self.parallel_workers is not None
                    else []
                ),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if answer.returncode != 0:
            raise RuntimeError(f"building the MLServer repository failed: {answer.stderr[-2000:]}")
        self.names = list(names)
        self.build_info = json.loads(answer.stdout.strip().splitlines()[-1])
        return self.build_info

    def start(self, timeout: float = 600.0) -> MLServerPeer:
        """Start ``mlserver start REPO``; return once every model is READY."""
        import httpx

        if not self.names:
            raise RuntimeError("build() the repository first")
        log = self.log_path.open("wb")
        began = time.perf_counter()
        self._process = subprocess.Popen(
            [str(self.executable), "start", str(self.repo)],
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() ends all it started
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        deadline = time.monotonic() + timeout
        wanted = set(self.names)
        with httpx.Client(timeout=10.0) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(
                        f"mlserver exited with {self._process.returncode}: {self.log_tail()}"
                    )
                try:
                    index = client.post(f"{self.base_url}/v2/repository/index", json={})
                    if index.status_code == 200:
                        ready = {m["name"] for m in index.json() if m.get("state") == "READY"}
                        if wanted <= ready:
                            self.startup_s = time.perf_counter() - began
                            return self
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlserver did not get every model READY in {timeout:.0f} s")

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server and every process it started (its own process group)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        except ProcessLookupError:
            pass

    def __enter__(self) -> MLServerPeer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
