"""``citymodels local up`` / ``local down`` and ``demo --keep-running`` as a user runs them:
several stacks at once, from any directory of the project, with ports already taken."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from citymodels_devkit import cli
from citymodels_devkit.demo import Demo, DemoOptions
from citymodels_devkit.local.run import StackFiles, claim, run_foreground
from citymodels_devkit.local.stack import LocalStack, PortInUse, write_outputs

OUTPUTS = {"DataBucket": "b", "ApiUrl": "http://127.0.0.1:9/v1/", "AwsEndpointUrl": "x"}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A citymodels project (template.yaml and pyproject.toml at its root), cwd at its root."""
    root = tmp_path / "project"
    (root / "docs").mkdir(parents=True)
    (root / "template.yaml").write_text("Resources: {}\n")
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    monkeypatch.chdir(root)
    return root


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def first_stack(project: Path) -> Iterator[int]:
    """The pid of a process holding the default stack's files, as ``local up --detach``
    leaves them: not a child of this one (its parent exits), as a detached stack is not."""
    started = subprocess.run(
        ["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], capture_output=True, check=True
    )
    pid = int(started.stdout)
    files = StackFiles.of()
    claim(files, pid)
    write_outputs(OUTPUTS, files.outputs)
    try:
        yield pid
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    def invoke(*argv: str | Path) -> tuple[int, str, str]:
        code = cli.main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


class _FakeStack(LocalStack):
    """Starts nothing: outputs at once, or a taken port."""

    def __init__(self, fail: PortInUse | None = None, dies: str | None = None) -> None:
        super().__init__(None)
        self.fail, self.dies, self.stopped = fail, dies, False

    def start(self) -> dict[str, str]:
        if self.fail is not None:
            raise self.fail
        return dict(OUTPUTS)

    def stop(self) -> None:
        self.stopped = True

    def dead(self) -> str | None:
        return self.dies


def test_a_second_stack_leaves_the_first_ones_pid_and_outputs_alone(
    project: Path, first_stack: int, run: Any
) -> None:
    # GIVEN a detached stack on the default outputs, and a second one with its own file
    default = StackFiles.of()
    other = StackFiles.of(Path("other.json"))
    assert other.pid != default.pid and other.work_dir != default.work_dir
    seen: list[bool] = []

    class Stop(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            seen.append(other.outputs.exists())
            return True  # Ctrl-C at once

    # WHEN the second runs and is stopped (Ctrl-C)
    run_foreground(_FakeStack(), other, stop_event=Stop())
    # THEN it wrote and removed only its own files
    assert seen == [True] and not other.outputs.exists() and not other.pid.exists()
    assert default.outputs.exists() and default.pid.exists()
    # AND local down, from a subdirectory of the project, stops the first one
    os.chdir(project / "docs")
    code, out, err = run("local", "down")
    assert code == 0, err
    assert f"pid {first_stack}" in out
    assert not _alive(first_stack)


def test_a_stack_on_outputs_already_in_use_is_refused_with_how_to_run_another(
    project: Path, first_stack: int, run: Any
) -> None:
    code, _, err = run("local", "up")
    assert code == 1
    assert f"pid {first_stack}" in err
    assert "--outputs-file FILE --aws-port PORT --api-port PORT" in err
    assert _alive(first_stack)  # left running


def test_local_down_with_nothing_running_says_where_it_looked_and_what_runs(
    project: Path, first_stack: int, run: Any
) -> None:
    code, _, err = run("local", "down", "--outputs-file", "nope.json")
    assert code == 1
    assert str(project / "nope.json") in err  # where it looked
    assert str(project / ".citymodels") in err
    assert "running: citymodels local down (pid" in err  # what does run, and how to stop it


def _taken_port() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


def test_a_taken_aws_port_names_the_port_and_the_flag(project: Path, run: Any) -> None:
    sock, port = _taken_port()
    with sock:
        code, _, err = run(
            "local", "up", "--aws-port", port, "--api-port", "0", "--template",
            Path(__file__).parents[2] / "template.yaml",
        )  # fmt: skip
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"port {port} on 127.0.0.1 is already in use" in err
    assert "--aws-port PORT" in err
    assert "local stacks running here" not in err  # none but the one that failed
    assert not StackFiles.of().pid.exists() and not StackFiles.of().outputs.exists()


def test_kept_state_it_cannot_restore_is_one_line_saying_to_start_fresh(
    project: Path, run: Any
) -> None:
    state = StackFiles.of().work_dir / "state"
    state.mkdir(parents=True)
    (state / "snapshot.pickle").write_bytes(b"not a snapshot")
    code, _, err = run(
        "local", "up", "--aws-port", "0", "--api-port", "0", "--template",
        Path(__file__).parents[2] / "template.yaml",
    )  # fmt: skip
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(state) in err and "local up --fresh" in err
    assert not StackFiles.of().pid.exists()


def test_a_process_of_the_stack_that_ends_stops_local_up_with_its_reason(project: Path) -> None:
    from citymodels_devkit.local.run import LocalStackError

    # GIVEN a running stack whose aws process was killed
    stack = _FakeStack(dies="the local stack's aws process ended (exit code -9)")
    # WHEN local up watches it THEN it stops, says which process ended, and cleans up
    with pytest.raises(LocalStackError, match=r"aws process ended \(exit code -9\).*local up"):
        run_foreground(stack, StackFiles.of())
    assert stack.stopped
    assert not StackFiles.of().pid.exists() and not StackFiles.of().outputs.exists()


def test_a_taken_api_port_names_the_api_flag(project: Path, run: Any) -> None:
    from citymodels_devkit.local.run import LocalStackError

    with pytest.raises(LocalStackError, match=r"port 3300 on 127\.0\.0\.1 .*--api-port PORT"):
        run_foreground(_FakeStack(PortInUse("api", "127.0.0.1", 3300)), StackFiles.of())
    assert not StackFiles.of().pid.exists()


def _demo(tmp_path: Path) -> Demo:
    demo = Demo(DemoOptions(work_dir=tmp_path / "demo", cities=2), Console(file=io.StringIO()))
    demo.result.outputs = dict(OUTPUTS)
    demo.cities = ["NewYork_NY", "Chicago_IL"]
    return demo


def test_demo_keep_running_leaves_another_stacks_outputs_alone(
    project: Path, first_stack: int
) -> None:
    # GIVEN another stack's .citymodels/outputs.json
    before = StackFiles.of().outputs.read_text()
    demo = _demo(project)
    stop = threading.Event()
    stop.set()
    # WHEN the demo keeps its stack running
    demo.serve_until_stopped(stop)
    # THEN the other stack's files are untouched, and the demo says where its outputs are
    assert StackFiles.of().outputs.read_text() == before
    assert StackFiles.of().pid.read_text().startswith(f"{first_stack}\n")
    text = demo.console.file.getvalue()  # type: ignore[attr-defined]
    assert f"--outputs {demo.outputs_path}" in " ".join(text.split())


def test_demo_keep_running_writes_the_default_outputs_while_it_runs(project: Path) -> None:
    files = StackFiles.of()
    seen: list[bool] = []

    class Stop(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            seen.append(files.outputs.exists() and files.pid.exists())
            return True

    _demo(project).serve_until_stopped(Stop())
    assert seen == [True]
    assert not files.outputs.exists() and not files.pid.exists()
