"""What the benchmarks share: the machine they ran on, a clean stdout for their one JSON
object, percentiles, a client in a process of its own, and the local stack's options.

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
        "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


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
