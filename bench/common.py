"""What the benchmarks share: the machine they ran on, a clean stdout for their one JSON
object, percentiles, a client in a process of its own, the local stack's options, and
what ``/proc`` says of the stack's processes (CPU seconds, resident memory, each role's
process tree).

The scripts run as ``python bench/bench_X.py``, so this directory is on ``sys.path``
and they import this module as ``common``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from citymodels_devkit.local.stack import LocalOptions

BENCH_STACK = "cm-bench"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The machine a result was measured on (the ``machine`` key of every result)."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_at_start": loadavg(),
    }


def loadavg() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages now (None where unknown)."""
    return os.getloadavg() if hasattr(os, "getloadavg") else None


# -- the stack's processes (Linux /proc; empty answers elsewhere) ---------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_s(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process so far (its own threads; children it has
    waited for are not counted). 0.0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def child_pids(pid: int | str = "self") -> list[int]:
    """A process's children (every thread's, from ``/proc/PID/task/*/children``)."""
    found: set[int] = set()
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found.update(int(p) for p in children.read_text().split())
        except OSError:
            continue
    return sorted(found)


def descendant_pids(pid: int | str = "self") -> list[int]:
    """Every process below ``pid`` (children, their children...), not ``pid`` itself."""
    found: list[int] = []
    todo = child_pids(pid)
    while todo:
        child = todo.pop()
        if child not in found:
            found.append(child)
            todo.extend(child_pids(child))
    return sorted(found)


def process_kind(pid: int) -> str:
    """What a Python child is, from its command line: ``resource tracker`` (multiprocessing's),
    ``spawned`` (a ``spawn`` child: a job worker, under the aws process), else its name."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return "gone"
    if b"resource_tracker" in cmdline:
        return "resource tracker"
    if b"spawn_main" in cmdline or b"forkserver" in cmdline:
        return "spawned"
    return cmdline.decode("utf-8", "replace").strip()[:80]


def _proc_mib(path: str, field: str) -> float | None:
    """A ``field:  N kB`` line of a ``/proc`` file, in MiB (None if the file is not readable)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def memory_mb(pid: int | str = "self") -> dict[str, float | None]:
    """A process's resident memory now, MiB: ``rss`` (``/proc/PID/status`` VmRSS) and ``pss``
    (``/proc/PID/smaps_rollup``: shared pages split among their sharers, so the PSS of
    several processes adds up; None where that file is not readable)."""
    return {
        "rss": _proc_mib(f"/proc/{pid}/status", "VmRSS:"),
        "pss": _proc_mib(f"/proc/{pid}/smaps_rollup", "Pss:"),
    }


def stack_roles(processes: dict[str, int]) -> dict[str, list[int]]:
    """The local stack's processes by role, from ``LocalStack.processes()``: ``functions``,
    ``aws``, ``dynamodb``, ``endpoint`` (one pid each), ``job_workers`` (the aws process's spawned
    children) and ``other`` (multiprocessing's resource trackers, and anything else below
    aws). The functions process's other children (a benchmark's client) are not the
    stack's."""
    roles: dict[str, list[int]] = {role: [pid] for role, pid in processes.items()}
    roles["job_workers"], roles["other"] = [], []
    if "aws" in processes:
        for pid in descendant_pids(processes["aws"]):
            kind = "job_workers" if process_kind(pid) == "spawned" else "other"
            roles[kind].append(pid)
    if "functions" in processes:  # it started the aws, DynamoDB and endpoint processes
        for pid in child_pids(processes["functions"]):
            if process_kind(pid) == "resource tracker":
                roles["other"].append(pid)
    return roles


class CpuWindow:
    """CPU seconds of each process of the local stack over a window: :meth:`start`, then
    :meth:`stop` returns, per role, CPU seconds and average cores (the job workers also
    each), and the total.

    Parameters
    ----------
    processes
        ``LocalStack.processes()``.
    """

    def __init__(self, processes: dict[str, int]) -> None:
        self.processes = processes
        self._before: dict[int, float] = {}
        self._started = 0.0

    def start(self) -> None:
        import time

        roles = stack_roles(self.processes)
        self._before = {pid: process_cpu_s(pid) for pids in roles.values() for pid in pids}
        self._started = time.monotonic()

    def stop(self) -> dict[str, Any]:
        import time

        window = time.monotonic() - self._started
        roles = stack_roles(self.processes)

        def used(pid: int) -> float:  # a process born in the window counts from 0
            return process_cpu_s(pid) - self._before.get(pid, 0.0)

        result: dict[str, Any] = {"window_s": window}
        total = 0.0
        for role in ("functions", "aws", "dynamodb", "endpoint", "job_workers", "other"):
            pids = roles.get(role, [])
            if not pids and role in ("job_workers", "other"):
                continue
            each = {str(pid): used(pid) for pid in pids}
            seconds = sum(each.values())
            total += seconds
            entry: dict[str, Any] = {"cpu_s": seconds, "cores": seconds / window}
            if role in ("job_workers", "other"):
                entry["each_cpu_s"] = each
            else:
                entry["pid"] = pids[0]
            result[role] = entry
        result["total"] = {"cpu_s": total, "cores": total / window}
        return result


def stack_memory(processes: dict[str, int]) -> dict[str, Any]:
    """Resident memory (MiB) of every process of the local stack now, by role (job workers
    each and summed), and the sum over all of them (``rss`` double-counts shared pages,
    ``pss`` does not)."""
    roles = stack_roles(processes)
    result: dict[str, Any] = {}
    sums: dict[str, float | None] = {"rss": 0.0, "pss": 0.0}
    for role, pids in roles.items():
        if not pids:
            continue
        each = {pid: memory_mb(pid) for pid in pids}
        entry: dict[str, Any] = {}
        for key in ("rss", "pss"):
            values = [m[key] for m in each.values()]
            value = None if any(v is None for v in values) else sum(v for v in values if v)
            entry[key] = value
            total = sums[key]
            sums[key] = None if value is None or total is None else total + value
        if role in ("job_workers", "other"):
            entry["each"] = {str(pid): m for pid, m in each.items()}
        else:
            entry["pid"] = pids[0]
        result[role] = entry
    result["sum"] = sums
    return result


def claim_stdout() -> TextIO:
    """Keep stdout for the result: everything else written to fd 1 goes to stderr.

    The functions' EMF metrics (Powertools prints them) and anything the job workers
    (started later, so they inherit the redirection) print would otherwise mix with
    the one JSON object a benchmark prints.
    """
    sys.stdout.flush()
    result = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    return result


def emit(result: dict[str, Any], out: TextIO) -> int:
    """Print a benchmark's one JSON object on ``out`` (from :func:`claim_stdout`);
    return the exit status 0."""
    json.dump(result, out, indent=2)
    out.write("\n")
    out.flush()
    return 0


def percentiles(samples_ns: list[int], scale: float) -> dict[str, float] | None:
    """p50 / p90 / p99 / mean of nanosecond samples divided by ``scale`` (1e3: µs)."""
    if not samples_ns:
        return None
    ordered = sorted(samples_ns)
    return {
        "p50": ordered[len(ordered) // 2] / scale,
        "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] / scale,
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] / scale,
        "mean": statistics.fmean(ordered) / scale,
        "n": len(ordered),
    }


def _client_main(measure: Callable[[dict[str, Any]], dict[str, Any]], spec: Any, conn: Any) -> None:
    try:
        conn.send(measure(spec))
    except BaseException as error:  # report, never hang the parent
        conn.send({"error": f"{type(error).__name__}: {error}"})
    finally:
        conn.close()


def run_client(
    measure: Callable[[dict[str, Any]], dict[str, Any]], spec: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """Run ``measure(spec)`` in a fresh process (as any user of the stack is); return
    its result, or raise what it raised.

    ``measure`` must be a module-level function (the process is spawned, not forked:
    the stack's threads stay behind).
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_client_main, args=(measure, spec, sender), name="bench client"
    )
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            raise TimeoutError(f"the client did not finish in {timeout:.0f} s")
        answer: dict[str, Any] = receiver.recv()
    finally:
        process.join(timeout=10)
        if process.is_alive():
            process.terminate()
    if "error" in answer:
        raise RuntimeError(f"client: {answer['error']}")
    return answer


def local_options(work_dir: Path) -> LocalOptions:
    """A fresh local stack's options for a benchmark: free ports, ``LogLevel`` WARNING."""
    # Imported here: a benchmark may wrap the stack's classes before the stack is imported.
    from citymodels_devkit.local.stack import LocalOptions

    return LocalOptions(
        stack_name=BENCH_STACK,
        aws_port=0,
        api_port=0,
        work_dir=work_dir,
        parameter_overrides={"LogLevel": "WARNING"},
    )
