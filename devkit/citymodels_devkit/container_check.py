"""Run the container-side code on the SageMaker scikit-learn container's Python.

``preprocessing/`` and the ``citymodels`` package run inside SageMaker's scikit-learn
container (framework 1.2-1, Python 3.9), not on our 3.11. ``make test`` calls this
module: it finds an interpreter of that version on the machine (PATH or pyenv) and
runs, under it, the processing script end to end on a small generated upload and the
inference handler functions, with only the standard library and the shipped package
on the path — exactly what the container has. Syntax is separately checked by ruff
with ``target-version = "py39"`` for those directories, so a machine without such an
interpreter still catches newer syntax; this module then says it skipped the run.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from citymodels_devkit.paths import LAYER_DIR, PREPROCESSING_DIR

_SMOKE = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import inference
model = inference.model_fn(sys.argv[2])
rows = inference.input_fn(b"1995,2100.5,3,2.5,0.8,2,y,N\n", "text/csv")
rows += inference.input_fn(json.dumps({"instances": [{"YEAR_BUILT": 2001, "SQUARE_FEET": 1800,
    "NUM_BEDROOMS": 2, "NUM_BATHROOMS": 1, "LOT_ACRES": 0.3, "GARAGE_SPACES": 0,
    "FRONT_PORCH": "n", "DECK": "y"}]}), "application/json")
body, content_type = inference.output_fn(inference.predict_fn(rows, model), "text/csv")
lines = body.strip().splitlines()
assert content_type == "text/csv" and len(lines) == 2, body
assert [len(l.split(",")) for l in lines] == [10, 10], body
try:
    inference.input_fn(b"1995,abc,3,2,1,1,y,n\n", "text/csv")
except ValueError as err:
    assert "SQUARE_FEET" in str(err), err
else:
    raise AssertionError("bad row accepted")
print("inference ok on Python %d.%d" % sys.version_info[:2])
"""


def find_interpreter(version: str) -> str | None:
    """Return the path of a ``python{version}`` interpreter, or None."""
    candidates = [shutil.which(f"python{version}")]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += [str(p) for p in sorted(pyenv_root.glob(f"versions/{version}.*/bin/python3"))]
    for candidate in candidates:
        if not candidate:
            continue
        try:
            out = subprocess.run(
                [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return candidate
    return None


def _sample_upload(path: Path, rows: int = 120) -> None:
    rng = random.Random(7)
    lines = []
    for _ in range(rows):
        year = rng.randint(1960, 2019)
        sqft = round(rng.gauss(3000, 700), 1)
        price = 150 * sqft - 5000 * (2019 - year) + 200_000 + rng.gauss(0, 5000)
        lines.append(
            f"{year},{sqft},{rng.randint(2, 6)},{rng.randint(2, 6) / 2},"
            f"{round(rng.uniform(0.3, 2), 2)},{rng.randint(0, 3)},"
            f"{rng.choice('yn')},{rng.choice('yn')},{round(price)}"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_check(python: str) -> None:
    """Run the processing script and the inference handlers under ``python``.

    Raises
    ------
    RuntimeError
        With the interpreter's output, when either fails.
    """
    with tempfile.TemporaryDirectory(prefix="cm-container-") as tmp:
        root = Path(tmp)
        code = root / "code"
        shutil.copytree(PREPROCESSING_DIR, code, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(
            LAYER_DIR / "citymodels",
            code / "citymodels",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        (root / "input").mkdir()
        _sample_upload(root / "input" / "upload.csv")
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONNOUSERSITE": "1"}
        steps = [
            [
                python, "-I", str(code / "preprocess.py"),
                "--input-dir", str(root / "input"), "--output-dir", str(root / "output"),
                "--message-file", str(root / "message"), "--city", "Smoke_Test",
                "--run", "20261125T004255123Z-0062A1B2C3D4E5F60000000000000000",
            ],
            [python, "-I", "-c", _SMOKE, str(code), str(root)],
        ]  # fmt: skip
        for step in steps:
            result = subprocess.run(
                step, capture_output=True, text=True, env=env, timeout=120, check=False
            )
            if result.returncode != 0:
                raise RuntimeError(f"{' '.join(step[:3])} failed:\n{result.stdout}{result.stderr}")
            print(result.stdout.strip().splitlines()[-1][:200])
        counts = {
            p.parent.name: len(p.read_text().splitlines()) for p in root.glob("output/*/*.csv")
        }
        expected = {"train": 76, "validation": 32, "test": 12, "test-raw": 12}
        if counts != expected:
            raise RuntimeError(f"unexpected split sizes {counts}, expected {expected}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python -m citymodels_devkit.container_check``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-version", default="3.9", help="the container's Python")
    args = parser.parse_args(argv)
    python = find_interpreter(args.python_version)
    if python is None:
        print(
            f"container-check: no Python {args.python_version} interpreter on this machine; "
            "skipped the run (syntax was checked by ruff for py39)"
        )
        return 0
    try:
        run_check(python)
    except RuntimeError as err:
        print(f"container-check FAILED on {python}:\n{err}", file=sys.stderr)
        return 1
    print(f"container-check: preprocessing and inference run on {python}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
