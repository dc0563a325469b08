"""``citymodels local up`` / ``local down``: the local stack as a foreground or
detached process, with its outputs in ``.citymodels/outputs.json`` (or ``--outputs-file``).

Each running stack is known by its outputs file, and owns a pid file, a log and a work
directory derived from it (:class:`StackFiles`), all in the project's state directory
(:func:`~citymodels_devkit.paths.state_dir`). Two stacks with different outputs files
therefore never touch each other's files, and ``local down`` stops the one asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from citymodels_devkit.paths import state_dir

OUTPUTS_NAME = "outputs.json"


class LocalStackError(RuntimeError):
    """The local stack could not be started or stopped; the message says why."""


def default_outputs(state: Path | None = None) -> Path:
    """``.citymodels/outputs.json`` in the project's state directory."""
    return (state or state_dir()) / OUTPUTS_NAME


@dataclass(frozen=True)
class StackFiles:
    """The files of one local stack, keyed by its outputs file.

    The stack writing the default outputs file has ``local.pid``, ``local.log`` and
    ``local/``; one writing ``--outputs-file FILE`` has ``local-{stem}-{hash}.*``, the hash
    being of FILE's absolute path, so two stacks never share one.
    """

    outputs: Path
    pid: Path
    log: Path
    work_dir: Path

    @classmethod
    def of(cls, outputs: Path | None = None, state: Path | None = None) -> StackFiles:
        """Return the files of the stack writing ``outputs`` (default: the default file)."""
        state = state or state_dir()
        default = default_outputs(state)
        path = Path(outputs).resolve() if outputs is not None else default
        if path == default:
            base = "local"
        else:
            digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
            base = f"local-{path.stem}-{digest}"
        return cls(path, state / f"{base}.pid", state / f"{base}.log", state / base)


def _read_pid_file(path: Path) -> tuple[int, Path] | None:
    try:
        pid_text, outputs_text = path.read_text().split("\n")[:2]
        return int(pid_text), Path(outputs_text)
    except (FileNotFoundError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: alive
    return True


def running_pid(files: StackFiles) -> int | None:
    """Return the pid of the stack writing ``files.outputs``, or None (a stale pid file
    is removed)."""
    found = _read_pid_file(files.pid)
    if found is None:
        return None
    if not _alive(found[0]):
        files.pid.unlink(missing_ok=True)
        return None
    return found[0]


def running_stacks(state: Path | None = None) -> list[tuple[int, Path]]:
    """Every live local stack of this project: ``(pid, outputs file)``."""
    stacks = []
    for pid_file in sorted((state or state_dir()).glob("local*.pid")):
        found = _read_pid_file(pid_file)
        if found is not None and _alive(found[0]):
            stacks.append(found)
    return stacks


def _down_command(outputs: Path, state: Path) -> str:
    if outputs == default_outputs(state):
        return "citymodels local down"
    return f"citymodels local down --outputs-file {outputs}"


def refuse_if_running(files: StackFiles, allow: int | None = None) -> None:
    """Raise :class:`LocalStackError` if a live process (other than ``allow``) runs a
    stack with ``files.outputs``; the message says how to stop it or start another."""
    running = running_pid(files)
    if running is not None and running != allow:
        state = files.pid.parent
        raise LocalStackError(
            f"a local stack (pid {running}) is already running with outputs {files.outputs}: "
            f"stop it with {_down_command(files.outputs, state)}, or start another with "
            "--outputs-file FILE --aws-port PORT --api-port PORT"
        )


def claim(files: StackFiles, pid: int | None = None) -> None:
    """Record that process ``pid`` (default: this one) runs the stack of ``files``.

    Raises
    ------
    LocalStackError
        Another live process already runs a stack with these outputs.
    """
    refuse_if_running(files, allow=pid or os.getpid())
    files.pid.parent.mkdir(parents=True, exist_ok=True)
    files.pid.write_text(f"{pid or os.getpid()}\n{files.outputs}\n")


def release(files: StackFiles) -> None:
    """Remove the outputs and pid files of a stack this process ran (another's stay)."""
    found = _read_pid_file(files.pid)
    if found is not None and found[0] != os.getpid():
        return
    for path in (files.outputs, files.pid):
        path.unlink(missing_ok=True)


def port_in_use_message(port: int, host: str, flag: str) -> str:
    """One line for a port another program holds, naming the option that moves it."""
    others = [(pid, out) for pid, out in running_stacks() if pid != os.getpid()]
    holders = ", ".join(f"pid {pid} (outputs {out})" for pid, out in others)
    who = f"; local stacks running here: {holders}" if holders else ""
    return (
        f"port {port} on {host} is already in use{who}: stop what listens there "
        f"(citymodels local down), or choose another port with {flag} PORT"
    )


def run_foreground(
    stack: object,
    files: StackFiles,
    *,
    on_ready: Callable[[dict[str, str]], None] | None = None,
    stop_event: threading.Event | None = None,
) -> None:
    """Start ``stack`` (a :class:`~citymodels_devkit.local.stack.LocalStack`), write its
    outputs, and serve until SIGINT/SIGTERM (or ``stop_event``); then stop cleanly and
    remove the outputs file, which describes a running stack.

    Raises
    ------
    LocalStackError
        A stack with the same outputs file is running, or a port is taken (the message
        names it and the option that changes it).
    """
    from citymodels_devkit.local.stack import LocalStack, PortInUse, write_outputs

    assert isinstance(stack, LocalStack)
    claim(files)  # before binding ports: the clearer message when both clash
    stop = stop_event or threading.Event()
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        try:
            outputs = stack.start()
        except PortInUse as err:
            flag = {"aws": "--aws-port", "api": "--api-port"}[err.which]
            raise LocalStackError(port_in_use_message(err.port, err.host, flag)) from err
        write_outputs(outputs, files.outputs)
        if on_ready is not None:
            on_ready(outputs)
        while not stop.wait(0.5):
            if (dead := stack.dead()) is not None:  # a child crashed or was killed
                raise LocalStackError(f"{dead}: stopping the rest; start it again with `local up`")
    finally:
        stack.stop()
        release(files)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def start_detached(
    argv: Sequence[str], files: StackFiles, timeout: float = 180.0
) -> dict[str, str]:
    """Run ``citymodels local up ARGV`` in the background; return its outputs once ready.

    Raises
    ------
    LocalStackError
        A stack with these outputs is already running, or the new one exited or did not
        become ready in time (the end of its log is in the message).
    """
    refuse_if_running(files)  # early; the child claims the files for itself
    files.outputs.unlink(missing_ok=True)
    files.log.parent.mkdir(parents=True, exist_ok=True)
    with files.log.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "citymodels_devkit.cli", "local", "up", *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    claim(files, process.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if files.outputs.exists():
            try:
                return dict(json.loads(files.outputs.read_text()))
            except json.JSONDecodeError:
                pass  # being written
        if process.poll() is not None:
            files.pid.unlink(missing_ok=True)
            raise LocalStackError(
                f"the local stack exited ({process.returncode}):\n{_tail(files.log)}"
            )
        time.sleep(0.2)
    process.terminate()
    raise LocalStackError(
        f"the local stack was not ready after {timeout:.0f} s:\n{_tail(files.log)}"
    )


def stop_detached(files: StackFiles, timeout: float = 30.0) -> int:
    """Stop the local stack writing ``files.outputs``; return its pid.

    Raises
    ------
    LocalStackError
        None is running (the message says where it looked, and which stacks do run),
        or it did not stop in time.
    """
    pid = running_pid(files)
    if pid is None:
        state = files.pid.parent
        others = running_stacks(state)
        hint = (
            "; running: " + ", ".join(f"{_down_command(out, state)} (pid {p})" for p, out in others)
            if others
            else " (start one with: citymodels local up --detach)"
        )
        raise LocalStackError(
            f"no local stack is running with outputs {files.outputs} (looked for {files.pid}){hint}"
        )
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return pid
        time.sleep(0.2)
    raise LocalStackError(f"the local stack (pid {pid}) did not stop within {timeout:.0f} s")


def publish_outputs(outputs: Mapping[str, str], files: StackFiles) -> bool:
    """Write ``outputs`` to ``files.outputs`` for this process's stack, unless another
    live stack already writes there; return whether it was written."""
    from citymodels_devkit.local.stack import write_outputs

    try:
        claim(files)
    except LocalStackError:
        return False
    write_outputs(outputs, files.outputs)
    return True


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
