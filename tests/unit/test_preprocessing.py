"""The container code: the processing job's script and the inference pipeline's first
container, run in-process exactly as the scikit-learn container runs them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from citymodels.schema import ENCODED_FEATURES, FEATURE_DIM
from citymodels_devkit.paths import load_container_module
from tests.conftest import raw_rows, upload

preprocess = load_container_module("preprocess")
inference = load_container_module("inference")
RUN = "20261125T004255123Z-0062A1B2C3D4E5F60000000000000000"


@pytest.fixture
def job_dirs(tmp_path: Path) -> dict[str, Path]:
    dirs = {"input": tmp_path / "input" / "raw", "output": tmp_path / "output"}
    dirs["input"].mkdir(parents=True)
    dirs["message"] = tmp_path / "message"
    return dirs


def run_job(dirs: dict[str, Path], run: str = RUN) -> int:
    return int(
        preprocess.main(
            [
                "--input-dir",
                str(dirs["input"]),
                "--output-dir",
                str(dirs["output"]),
                "--message-file",
                str(dirs["message"]),
                "--run",
                run,
                "--city",
                "Chicago_IL",
            ]
        )
    )


def read_split(dirs: dict[str, Path], name: str) -> list[list[str]]:
    text = (dirs["output"] / name / f"{name}.csv").read_text()
    return [line.split(",") for line in text.splitlines()]


def test_processing_job_writes_label_first_splits_and_raw_test_rows(
    job_dirs: dict[str, Path],
) -> None:
    # GIVEN a 200-row upload with a header
    lines = raw_rows(200)
    (job_dirs["input"] / "upload.csv").write_bytes(upload(lines, header=True))
    # WHEN the processing job runs
    assert run_job(job_dirs) == 0
    # THEN the splits are 10 % test, 30 % of the rest validation, label first, one-hot
    train, validation, test = (read_split(job_dirs, n) for n in ("train", "validation", "test"))
    assert (len(train), len(validation), len(test)) == (126, 54, 20)
    assert {len(r) for r in train + validation + test} == {1 + FEATURE_DIM}
    assert all(float(r[0]) > 0 for r in train)
    assert {tuple(r[7:]) for r in train} <= {
        ("1", "0", "1", "0"), ("1", "0", "0", "1"), ("0", "1", "1", "0"), ("0", "1", "0", "1")
    }  # fmt: skip
    # AND the raw test rows are the same houses, in the raw format, price last
    raw_test = read_split(job_dirs, "test-raw")
    assert len(raw_test) == 20
    assert [float(r[8]) for r in raw_test] == [float(r[0]) for r in test]

    def house(fields: list[str]) -> tuple[object, ...]:
        return tuple(f if f in "yn" else float(f) for f in fields)

    assert {house(r) for r in raw_test} <= {house(line.split(",")) for line in lines}


def test_same_run_same_split_other_run_other_split(job_dirs: dict[str, Path]) -> None:
    (job_dirs["input"] / "upload.csv").write_bytes(upload(raw_rows(200)))
    run_job(job_dirs)
    first = read_split(job_dirs, "test")
    run_job(job_dirs)
    assert read_split(job_dirs, "test") == first
    run_job(job_dirs, RUN.replace("0062", "0099"))
    assert read_split(job_dirs, "test") != first


def test_invalid_upload_fails_the_job_with_the_reason_as_exit_message(
    job_dirs: dict[str, Path],
) -> None:
    bad = [*raw_rows(60), "1990,big,3,2,1,1,y,n,300000"]
    (job_dirs["input"] / "upload.csv").write_bytes(upload(bad))
    assert run_job(job_dirs) == 1
    message = job_dirs["message"].read_text()
    assert "line 61: SQUARE_FEET is not a number: 'big'" in message
    assert not (job_dirs["output"] / "train").exists()


def test_missing_input_or_run_fails_clearly(job_dirs: dict[str, Path]) -> None:
    assert run_job(job_dirs) == 1
    assert "expected exactly one .csv file" in job_dirs["message"].read_text()
    (job_dirs["input"] / "upload.csv").write_bytes(upload(raw_rows(60)))
    assert run_job(job_dirs, run="") == 1
    assert "no run id" in job_dirs["message"].read_text()


# -- inference container -------------------------------------------------------------

HOUSE = {
    "YEAR_BUILT": 1995, "SQUARE_FEET": 2500.5, "NUM_BEDROOMS": 3, "NUM_BATHROOMS": 2.5,
    "LOT_ACRES": 0.75, "GARAGE_SPACES": 2, "FRONT_PORCH": "y", "DECK": "n",
}  # fmt: skip
ENCODED = [1995.0, 2500.5, 3.0, 2.5, 0.75, 2.0, 1.0, 0.0, 0.0, 1.0]


def serve(body: bytes | str, content_type: str) -> str:
    model = inference.model_fn("/nonexistent")
    rows = inference.input_fn(body, content_type)
    out, out_type = inference.output_fn(inference.predict_fn(rows, model), "text/csv")
    assert out_type == "text/csv"
    return str(out)


def test_json_and_csv_requests_encode_identically_to_training() -> None:
    # GIVEN one house as JSON and as CSV WHEN served THEN both give the training encoding
    csv_body = "1995,2500.5,3,2.5,0.75,2,Y,n\n"
    as_json = serve(json.dumps({"instances": [HOUSE]}), "application/json")
    as_csv = serve(csv_body.encode(), "text/csv; charset=utf-8")
    assert as_json == as_csv
    assert [float(v) for v in as_csv.strip().split(",")] == ENCODED
    assert len(ENCODED) == len(ENCODED_FEATURES)


def test_preprocessor_artifact_round_trips(tmp_path: Path) -> None:
    (tmp_path / inference.PREPROCESSOR_FILE).write_text(
        json.dumps(inference.preprocessor_document())
    )
    assert inference.model_fn(str(tmp_path)).schema_version == "1"
    (tmp_path / inference.PREPROCESSOR_FILE).write_text(json.dumps({"schema_version": "0"}))
    with pytest.raises(ValueError, match="schema 0"):
        inference.model_fn(str(tmp_path))


@pytest.mark.parametrize(
    ("body", "content_type", "words"),
    [
        ('{"instances": [{"YEAR_BUILT": 1995}]}', "application/json", "row 1: missing field(s)"),
        (json.dumps({"instances": [HOUSE, {**HOUSE, "DECK": "maybe"}]}), "application/json",
         "row 2: DECK must be 'y' or 'n'"),
        (json.dumps({"instances": [{**HOUSE, "POOL": 1}]}), "application/json",
         "row 1: unknown field 'POOL'"),
        ("1995,2500,3,2,1,1,y\n", "text/csv", "row 1: expected 8 values"),
        ("1995,2500,3,2,1,1,y,n,400000\n", "text/csv", "got 9"),
        ("{not json", "application/json", "not JSON"),
        ('{"rows": []}', "application/json", '{"instances": [...]}'),
        ("", "text/csv", "no rows"),
        ("x", "application/x-npy", "unsupported content type"),
        (b"\xff\xfe", "text/csv", "not UTF-8"),
        ("1995,-5,3,2,1,1,y,n\n", "text/csv", "SQUARE_FEET must be a number greater than 0"),
    ],
)  # fmt: skip
def test_bad_requests_name_the_row_and_field(
    body: str | bytes, content_type: str, words: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        inference.input_fn(body, content_type)


def test_requests_over_the_row_limit_are_refused() -> None:
    body = "1995,2500,3,2,1,1,y,n\n" * (inference.MAX_ROWS + 1)
    with pytest.raises(ValueError, match="1001 rows; at most 1000"):
        inference.input_fn(body, "text/csv")
