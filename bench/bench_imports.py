"""Handler import times: the part of a Lambda cold start that is our code.

Each function's ``app`` module is imported in a fresh interpreter, as Lambda's init
phase does: the function's directory first on ``sys.path`` (``LAMBDA_TASK_ROOT``), the
layer's package next, and the environment ``template.yaml`` gives that function (the
local stack's resolution of it). The time is measured inside the interpreter around
``import app`` alone, so the interpreter's own start (which Lambda pays whatever the
code) is not in it. No bytecode is written, so every run is alike; the ``.pyc`` files
pip wrote for the dependencies are read, as Lambda reads its runtime's own.

The interpreter is this one (``.venv``'s, which ``make`` makes with the Lambda
runtime's Python when the machine has it); the result says whether its version is the
runtime's.

Usage::

    python bench/bench_imports.py [--runs 7] [--function predict ...]

Prints one JSON object: per function the median, p90 and minimum in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

from common import claim_stdout, machine

ROOT = Path(__file__).resolve().parents[1]
MEASURE = (
    "import sys, time\n"
    "start = time.perf_counter()\n"
    "import app\n"
    "sys.stdout.write(repr(time.perf_counter() - start))\n"
)


def function_environments() -> dict[str, dict[str, str]]:
    """Each function's directory name → its environment, resolved as the local stack does."""
    from citymodels_devkit.local.stack import LOCAL_IMAGES
    from citymodels_devkit.local.template import resolve_template

    stack = resolve_template(
        ROOT / "template.yaml", stack_name="cm-bench", parameter_overrides=LOCAL_IMAGES
    )
    return {f.code_dir.name: dict(f.environment) for f in stack.functions.values()}


def import_once(python: str, name: str, environment: dict[str, str]) -> float:
    """Seconds ``import app`` takes for function ``name`` in a fresh interpreter."""
    task_root = ROOT / "functions" / name
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        **environment,
        "LAMBDA_TASK_ROOT": str(task_root),
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "PYTHONPATH": os.pathsep.join([str(task_root), str(ROOT / "layers" / "common")]),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    result = subprocess.run(
        [python, "-B", "-c", MEASURE],
        cwd=task_root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"functions/{name}: import app failed:\n{result.stderr}")
    return float(result.stdout.strip().splitlines()[-1])


def template_runtime() -> str:
    match = re.search(r"^    Runtime: (python3\.\d+)", (ROOT / "template.yaml").read_text(), re.M)
    return match.group(1) if match else "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="imports per function (default 7)")
    parser.add_argument("--function", action="append", help="only these functions (repeat)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter to measure")
    args = parser.parse_args()
    python = str(Path(args.python).absolute()) if os.sep in args.python else args.python
    out = claim_stdout()

    environments = function_environments()
    names = args.function or sorted(environments)
    version = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    runtime = template_runtime()
    results = {}
    for name in names:
        samples = sorted(
            import_once(python, name, environments[name]) * 1000 for _ in range(args.runs)
        )
        results[name] = {
            "median_ms": round(statistics.median(samples), 1),
            "p90_ms": round(samples[max(0, round(0.9 * len(samples)) - 1)], 1),
            "min_ms": round(samples[0], 1),
        }
    json.dump(
        {
            "benchmark": "handler_imports",
            "runs": args.runs,
            "python": version,
            "runtime": runtime,
            "python_is_runtime": runtime == "python" + ".".join(version.split(".")[:2]),
            "functions": results,
            "machine": machine(),
        },
        out,
        indent=2,
    )
    out.write("\n")


if __name__ == "__main__":
    main()
