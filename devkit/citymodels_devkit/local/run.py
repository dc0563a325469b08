"""``citymodels local up`` / ``local down``: the local stack as a foreground or
detached process, with its outputs in ``.citymodels/outputs.json``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from citymodels_devkit.paths import WORK_DIR

PID_FILE = WORK_DIR / "local.pid"
LOG_FILE = WORK_DIR / "local.log"
DEFAULT_OUTPUTS = WORK_DIR / "outputs.json"


class LocalStackError(RuntimeError):
    """The local stack could not be started or stopped; the message says why."""


def run_foreground(
    stack: object,
    outputs_path: Path,
    *,
    on_ready: object = None,
    stop_event: threading.Event | None = None,
) -> None:
    """Start ``stack`` (a :class:`~citymodels_devkit.local.stack.LocalStack`), write its
    outputs, and serve until SIGINT/SIGTERM (or ``stop_event``); then stop cleanly and
    remove the outputs file, which describes a running stack."""
    from citymodels_devkit.local.stack import LocalStack, write_outputs

    assert isinstance(stack, LocalStack)
    stop = stop_event or threading.Event()
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        outputs = stack.start()
        write_outputs(outputs, outputs_path)
        PID_FILE.parent.mkdir(parents=True, exist_ok=True)
        PID_FILE.write_text(f"{os.getpid()}\n{outputs_path}\n")
        if callable(on_ready):
            on_ready(outputs)
        while not stop.wait(0.5):
            pass
    finally:
        stack.stop()
        for path in (outputs_path, PID_FILE):
            try:
                if (
                    path == PID_FILE
                    and path.exists()
                    and not path.read_text().startswith(f"{os.getpid()}\n")
                ):
                    continue
                path.unlink()
            except FileNotFoundError:
                pass
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def start_detached(
    argv: Sequence[str], outputs_path: Path, timeout: float = 180.0
) -> dict[str, str]:
    """Run ``citymodels local up ARGV`` in the background; return its outputs once ready.

    Raises
    ------
    LocalStackError
        A detached stack is already running, or the new one exited or did not become
        ready in time (the end of its log is in the message).
    """
    running = running_pid()
    if running is not None:
        raise LocalStackError(f"a detached local stack is already running (pid {running}); "
                              "stop it with: citymodels local down")  # fmt: skip
    if outputs_path.exists():
        outputs_path.unlink()
    LOG_FILE.parent.mkdir(parents=True, exist_ok=True)
    with LOG_FILE.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "citymodels_devkit.cli", "local", "up", *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if outputs_path.exists():
            try:
                return dict(json.loads(outputs_path.read_text()))
            except json.JSONDecodeError:
                pass  # being written
        if process.poll() is not None:
            raise LocalStackError(
                f"the local stack exited ({process.returncode}):\n{_tail(LOG_FILE)}"
            )
        time.sleep(0.2)
    process.terminate()
    raise LocalStackError(
        f"the local stack was not ready after {timeout:.0f} s:\n{_tail(LOG_FILE)}"
    )


def running_pid() -> int | None:
    """Return the pid of the detached local stack, or None (a stale pid file is removed)."""
    try:
        pid = int(PID_FILE.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        PID_FILE.unlink(missing_ok=True)
        return None
    except PermissionError:
        pass
    return pid


def stop_detached(timeout: float = 30.0) -> int:
    """Stop the detached local stack; return its pid.

    Raises
    ------
    LocalStackError
        None is running, or it did not stop in time.
    """
    pid = running_pid()
    if pid is None:
        raise LocalStackError(
            "no detached local stack is running (start one with: citymodels local up --detach)"
        )
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        time.sleep(0.2)
    raise LocalStackError(f"the local stack (pid {pid}) did not stop within {timeout:.0f} s")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
