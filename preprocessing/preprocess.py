"""Processing-job entry point: raw upload → train/validation/test CSVs for Linear Learner.

Runs in SageMaker's scikit-learn container (framework 1.2-1, Python 3.9) as
``python3 preprocess.py``, with the ``citymodels`` package shipped beside it in the
processing code bundle; needs nothing but the standard library and that package.

Container interface (paths overridable for tests and the local stack):

- input: ``/opt/ml/processing/input/raw/`` — the uploaded CSV (one ``.csv`` file)
- output: ``/opt/ml/processing/output/{train,validation,test}/{split}.csv`` — label
  first, no header, the ten one-hot features of :mod:`citymodels.schema`; and
  ``test-raw/test-raw.csv`` — the test rows in the raw 9-column format, for the
  quality gate
- ``CITYMODELS_CITY`` / ``CITYMODELS_RUN`` (or ``--city`` / ``--run``): the split is
  seeded from the run, so the same upload always splits the same way
- on failure: the reason in ``/opt/ml/output/message`` (DescribeProcessingJob's
  ``ExitMessage``) and exit status 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# In the container the package is a sibling directory of this script.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from citymodels.cities import validate_city_id
from citymodels.schema import COLUMNS, FEATURES, SCHEMA_VERSION, encode_values
from citymodels.splits import split_indices
from citymodels.validation import DEFAULT_LIMITS, UploadReader, ValidRow
from citymodels.versions import validate_version

DEFAULT_INPUT = "/opt/ml/processing/input/raw"
DEFAULT_OUTPUT = "/opt/ml/processing/output"
DEFAULT_MESSAGE = "/opt/ml/output/message"
SPLIT_NAMES = ("train", "validation", "test")


class PreprocessError(Exception):
    """The input cannot be processed; the message says why, for ExitMessage."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the processing job's arguments; unknown ones are ignored (SageMaker may add some)."""
    parser = argparse.ArgumentParser(
        description="Validate a city's raw CSV upload and write Linear Learner's channels."
    )
    parser.add_argument("--input-dir", default=DEFAULT_INPUT, help="directory with the raw CSV")
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT, help="where the splits go")
    parser.add_argument("--message-file", default=DEFAULT_MESSAGE, help="failure reason file")
    parser.add_argument("--city", default=os.environ.get("CITYMODELS_CITY"), help="city id")
    parser.add_argument("--run", default=os.environ.get("CITYMODELS_RUN"), help="run id")
    args, _unknown = parser.parse_known_args(argv)
    return args


def find_input(input_dir: Path) -> Path:
    """Return the one CSV file under ``input_dir``."""
    files = sorted(p for p in input_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    csvs = [p for p in files if p.suffix.lower() == ".csv"]
    if len(csvs) != 1:
        found = ", ".join(p.name for p in files) or "nothing"
        raise PreprocessError(f"expected exactly one .csv file in {input_dir}, found {found}")
    return csvs[0]


def read_rows(path: Path) -> list[ValidRow]:
    """Read and validate the upload with the same rules as the ``onboard`` function."""
    with path.open("rb") as stream:
        reader = UploadReader(stream, size=path.stat().st_size, limits=DEFAULT_LIMITS)
        rows = list(reader)
    report = reader.report
    if not report.ok:
        raise PreprocessError(f"{path.name}: {report.summary()}")
    return rows


def transform(rows: Sequence[ValidRow]) -> list[list[float]]:
    """Return Linear Learner rows: the price, then the encoded features."""
    return [[row.price, *encode_values(row.features)] for row in rows]


def format_number(value: float) -> str:
    """Format a number compactly without losing precision (``3.0`` → ``3``)."""
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def raw_line(row: ValidRow) -> str:
    """Return a valid row in the raw headerless 9-column format."""
    fields = [v if isinstance(v, str) else format_number(v) for v in row.features]
    return ",".join([*fields, format_number(row.price)])


def write_csv(path: Path, lines: Sequence[str]) -> None:
    """Write ``lines`` to ``path`` (creating its directory), newline-terminated."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for line in lines:
            out.write(line)
            out.write("\n")


def process(input_path: Path, output_dir: Path, run: str) -> dict[str, object]:
    """Validate, split (seeded from ``run``), encode and write the splits.

    Returns
    -------
    dict
        A summary: rows per split, schema version, columns.
    """
    rows = read_rows(input_path)
    split = split_indices(len(rows), seed=run)
    encoded = transform(rows)
    counts: dict[str, int] = {}
    for name, indices in zip(SPLIT_NAMES, (split.train, split.validation, split.test)):
        write_csv(
            output_dir / name / f"{name}.csv",
            [",".join(format_number(v) for v in encoded[i]) for i in indices],
        )
        counts[name] = len(indices)
    write_csv(output_dir / "test-raw" / "test-raw.csv", [raw_line(rows[i]) for i in split.test])
    return {
        "input": input_path.name,
        "rows": len(rows),
        "splits": counts,
        "schema_version": SCHEMA_VERSION,
        "features": list(FEATURES),
        "raw_columns": list(COLUMNS),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the processing job; return the exit status."""
    args = parse_args(argv)
    try:
        if not args.run:
            raise PreprocessError("no run id: set CITYMODELS_RUN or pass --run")
        run = validate_version(args.run)
        if args.city:
            validate_city_id(args.city)
        summary = process(find_input(Path(args.input_dir)), Path(args.output_dir), run)
    except (PreprocessError, ValueError) as err:
        message = str(err)
        print(f"preprocess failed: {message}", file=sys.stderr)
        try:
            Path(args.message_file).parent.mkdir(parents=True, exist_ok=True)
            # ExitMessage keeps the first 1 KB; it must be UTF-8.
            Path(args.message_file).write_text(message[:1000], encoding="utf-8")
        except OSError as write_err:
            print(f"could not write {args.message_file}: {write_err}", file=sys.stderr)
        return 1
    print(json.dumps({"city": args.city, "run": run, **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
