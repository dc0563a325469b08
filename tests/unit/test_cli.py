"""The operator CLI against a moto account: what an operator types and what they see.

Every command runs through ``cli.main([...])`` as from a shell; the stack is found
through an outputs file pointing at the moto bucket and table (as the local stack
writes it). The HTTP API is a tiny ``http.server`` on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from citymodels.registry import FAILED, PUBLISHED, REJECTED, Registry, Run, hash_secret
from citymodels.versions import mint_version
from citymodels_devkit import cli
from citymodels_devkit.local.template import load_yaml
from citymodels_devkit.operations import empty_bucket
from citymodels_devkit.paths import REPO_ROOT
from citymodels_devkit.stack import StackError, StackOutputs, explain_aws_error, find_outputs
from tests.aws import BUCKET, ENDPOINT, REGION, TABLE, Aws
from tests.conftest import raw_rows, upload

V1 = mint_version("2026-11-25T01:00:00Z", "01")
V2 = mint_version("2026-11-25T02:00:00Z", "02")
V3 = mint_version("2026-11-25T03:00:00Z", "03")
V4 = mint_version("2026-11-25T04:00:00Z", "04")
CITY = "NewYork_NY"
HOUSE = [
    "YEAR_BUILT=1995",
    "SQUARE_FEET=2500",
    "NUM_BEDROOMS=3",
    "NUM_BATHROOMS=2.5",
    "LOT_ACRES=0.5",
    "GARAGE_SPACES=2",
    "FRONT_PORCH=y",
    "DECK=N",
]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    # rich sizes tables to the terminal; a wide one keeps version ids on one line
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.delenv("CITYMODELS_OUTPUTS", raising=False)
    monkeypatch.delenv("CITYMODELS_API_KEY", raising=False)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]):
    def invoke(*argv: str | Path) -> Result:
        code = cli.main([str(a) for a in argv])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke


def write_outputs(path: Path, **values: str) -> Path:
    path.write_text(json.dumps(values))
    return path


@pytest.fixture
def outputs(aws: Aws, tmp_path: Path) -> Path:
    """An outputs file for the moto stack, as ``citymodels local up`` writes one."""
    return write_outputs(
        tmp_path / "outputs.json",
        DataBucket=BUCKET,
        ApiUrl="http://127.0.0.1:9/Prod/",
        EndpointName=ENDPOINT,
        RegistryTable=TABLE,
        FailureQueueUrl=aws.failure_queue_url,
    )


def assert_one_line_error(result: Result, command: str, *fragments: str) -> None:
    assert result.code == 2, result
    assert result.err.count("\n") == 1, result.err
    assert result.err.startswith(f"citymodels {command}: error: ")
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in result.err


def seed_run(aws: Aws, version: str, status: str, *, city: str = CITY, **fields: Any) -> Run:
    run = Run(city=city, run=version, key=f"raw/{city}/{version[:15]}.csv", status=PUBLISHED)
    assert aws.registry.create_run(run)
    return aws.registry.update_run(city, version, status=status, **fields) or run


def seed_published(aws: Aws, version: str, mae: float, *, city: str = CITY) -> None:
    seed_run(aws, version, PUBLISHED, city=city, metrics={"test:mae": mae})
    assert aws.registry.publish(
        city, version, metrics={"test:mae": mae}, model_key=f"mme/{city}/{version}.tar.gz"
    )


def stack_rejects_the_upload(
    aws: Aws, monkeypatch: pytest.MonkeyPatch, key: str, reason: str
) -> list[Callable[[], object]]:
    """Once ``key`` is uploaded, the stack records run V2 for it, then rejects it: one step
    each time the registry is read (moto's tables are not safe to write from a thread).
    Returns the steps not taken yet."""
    steps: list[Callable[[], object]] = [
        lambda: aws.registry.create_run(Run(city=CITY, run=V2, key=key, status="PROCESSING")),
        lambda: aws.registry.update_run(CITY, V2, status=REJECTED, reason=reason),
    ]
    list_runs = Registry.list_runs

    def list_runs_as_the_stack_works(self: Registry, city: str, **kwargs: Any) -> list[Run]:
        if steps and key in objects(aws):
            steps.pop(0)()
        return list_runs(self, city, **kwargs)

    monkeypatch.setattr(Registry, "list_runs", list_runs_as_the_stack_works)
    return steps


def objects(aws: Aws) -> list[str]:
    return [o["Key"] for o in aws.s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


# Each test builds one moto account (about a second), so a test follows one story
# through several commands rather than one command per test.

# -- onboard ---------------------------------------------------------------------------


def test_onboard_checks_then_uploads_to_the_city_raw_key(run, aws: Aws, outputs: Path, tmp_path):
    # GIVEN a valid CSV
    body = upload(raw_rows(60))
    (tmp_path / "houses.csv").write_bytes(body)
    # WHEN it is onboarded
    result = run("onboard", CITY, tmp_path / "houses.csv", "--outputs", outputs)
    # THEN it is at raw/{city}/{name}, and the user is told how to follow it
    assert result.code == 0, result.err
    stored = aws.s3.get_object(Bucket=BUCKET, Key=f"raw/{CITY}/houses.csv")
    assert stored["Body"].read() == body
    assert f"s3://{BUCKET}/raw/{CITY}/houses.csv" in result.out
    assert f"citymodels status {CITY} --outputs {outputs}" in result.out
    # AND with --json, the key and the check's report
    (tmp_path / "header.csv").write_bytes(upload(raw_rows(60), header=True))
    data = run("onboard", CITY, tmp_path / "header.csv", "--outputs", outputs, "--json").json()
    assert (data["key"], data["bucket"]) == (f"raw/{CITY}/header.csv", BUCKET)
    assert data["check"]["ok"] and data["check"]["rows_valid"] == 60
    # AND --no-check uploads even what the stack will reject; --wait gives up at its timeout
    (tmp_path / "few.csv").write_bytes(upload(raw_rows(3)))
    result = run(
        "onboard", CITY, tmp_path / "few.csv", "--outputs", outputs, "--no-check",
        "--wait", "--interval", "0.01", "--timeout", "0.05",
    )  # fmt: skip
    assert result.code == 1
    assert f"gave up waiting after 0.05 s: no run was recorded for raw/{CITY}/few.csv" in result.err
    assert f"raw/{CITY}/few.csv" in objects(aws)


def test_onboard_uploads_under_the_stacks_raw_prefix_and_gives_up_when_nothing_records_it(
    run, aws: Aws, outputs: Path, tmp_path, monkeypatch
):
    # GIVEN a stack whose uploads land under incoming/ (its RawPrefix)
    values = json.loads(outputs.read_text())
    prefixed = write_outputs(tmp_path / "incoming.json", **values, RawPrefix="incoming/")
    (tmp_path / "houses.csv").write_bytes(upload(raw_rows(60)))
    # AND a stack that records no run within (here) 0.2 s
    monkeypatch.setattr("citymodels_devkit.operations.RECORD_TIMEOUT", 0.2)
    # WHEN the user onboards and waits with the default 30-minute --timeout
    started = time.monotonic()
    result = run(
        "onboard", CITY, tmp_path / "houses.csv", "--outputs", prefixed,
        "--wait", "--interval", "0.05",
    )  # fmt: skip
    # THEN the file is under incoming/, and the wait gave up promptly, saying why
    assert objects(aws) == [f"incoming/{CITY}/houses.csv"]
    assert result.code == 1
    assert time.monotonic() - started < 10
    assert f"no run was recorded for incoming/{CITY}/houses.csv" in result.err
    assert "RawPrefix" in result.err and f"citymodels status {CITY}" in result.err


def test_a_deployed_stacks_raw_prefix_is_its_parameter():
    answer = describe_stacks_answer("cmtest", {"DataBucket": BUCKET})
    answer["Stacks"][0]["Parameters"] = [
        {"ParameterKey": "RawPrefix", "ParameterValue": "drop/"},
        {"ParameterKey": "LogLevel", "ParameterValue": "INFO"},
    ]

    class CloudFormation:
        def describe_stacks(self, StackName: str) -> dict[str, Any]:  # noqa: N803
            return answer

    found = find_outputs(outputs_file=None, stack_name="x", cloudformation=CloudFormation)
    assert found.raw_prefix == "drop/"


def test_a_bad_csv_is_reported_with_its_rows_and_not_uploaded(
    run, aws: Aws, outputs: Path, tmp_path
):
    # GIVEN a CSV whose third line has a word for a number and a bad flag
    lines = raw_rows(60)
    fields = lines[2].split(",")
    fields[1], fields[7] = "big", "maybe"
    lines[2] = ",".join(fields)
    (tmp_path / "houses.csv").write_bytes(upload(lines))
    # WHEN it is onboarded
    result = run("onboard", CITY, tmp_path / "houses.csv", "--outputs", outputs)
    # THEN the report names the line and the reasons, and nothing reached the bucket
    assert_one_line_error(result, "onboard", "houses.csv was not uploaded", "1 invalid row")
    rows = [line.split("│") for line in result.out.splitlines() if "│" in line]
    assert [cells[0].strip() for cells in rows] == ["3", "3"]
    assert "SQUARE_FEET is not a number: 'big'" in rows[0][2]
    assert "DECK must be 'y' or 'n', got 'maybe'" in rows[1][2]
    # AND with --json the report is JSON
    (tmp_path / "few.csv").write_bytes(upload(raw_rows(10)))
    result = run("onboard", CITY, tmp_path / "few.csv", "--outputs", outputs, "--json")
    assert result.code == 2
    assert result.json()["check"]["file_problems"][0]["code"] == "too_few_rows"
    # AND mistakes in what was asked are one line each
    (tmp_path / "houses.txt").write_bytes(upload(raw_rows(60)))
    for argv, fragment in [
        (["New/York", tmp_path / "houses.txt"], "contains '/' at position 3"),
        ([CITY, tmp_path / "missing.csv"], f"file {tmp_path / 'missing.csv'} not found"),
        ([CITY, tmp_path / "houses.txt"], "is not a .csv file"),
    ]:
        assert_one_line_error(run("onboard", *argv, "--outputs", outputs), "onboard", fragment)
    assert objects(aws) == []


def test_onboard_wait_follows_the_new_run_not_an_earlier_one_of_the_same_key(
    run, aws: Aws, outputs: Path, tmp_path, monkeypatch
):
    # GIVEN an earlier upload to the same key, published
    key = f"raw/{CITY}/houses.csv"
    assert aws.registry.create_run(Run(city=CITY, run=V1, key=key, status=PUBLISHED))
    (tmp_path / "houses.csv").write_bytes(upload(raw_rows(60)))
    # AND a stack that, once the file is there, records its run and rejects it
    steps = stack_rejects_the_upload(aws, monkeypatch, key, "too few rows")
    # WHEN the user onboards and waits
    result = run(
        "onboard", CITY, tmp_path / "houses.csv", "--outputs", outputs,
        "--wait", "--interval", "0.01", "--timeout", "10", "--json",
    )  # fmt: skip
    # THEN the answer is the new run's, and the exit status says it was not published
    assert steps == []
    assert result.code == 1, result.err
    assert result.json()["run"]["run"] == V2
    assert result.json()["run"]["status"] == REJECTED


# -- status, models, rollback, remove --------------------------------------------------


def test_status_shows_cities_uploads_and_the_failure_queue(run, aws: Aws, outputs: Path):
    # GIVEN a city serving V1 whose newer upload failed, a city with only a rejection,
    # and a Lambda OnFailure record in the failure queue
    seed_published(aws, V1, 9512.0)
    seed_run(aws, V2, FAILED, reason="AlgorithmError: [Errno 28] no space", attempt=2)
    seed_run(aws, V3, REJECTED, city="Chicago_IL", reason="rejected: 3 invalid row(s)")
    record = {
        "timestamp": "2026-11-25T01:02:03.000Z",
        "requestContext": {
            "functionArn": f"arn:aws:lambda:{REGION}:123456789012:function:cmtest-Train:$LATEST",
            "condition": "RetriesExhausted",
        },
        "requestPayload": {"detail": {"ProcessingJobName": "cm-cmtest-abc-1"}},
        "responsePayload": {"errorType": "ThrottlingException", "errorMessage": "Rate exceeded"},
    }
    aws.sqs.send_message(QueueUrl=aws.failure_queue_url, MessageBody=json.dumps(record))
    # WHEN the cities are listed
    data = run("status", "--outputs", outputs, "--json").json()
    table = run("status", "--outputs", outputs).out
    # THEN each shows what it serves and its newest upload
    cities = {c["city"]: c for c in data["cities"]}
    assert (cities[CITY]["current_version"], cities[CITY]["uploads"]) == (V1, 2)
    assert cities[CITY]["newest_upload"]["status"] == FAILED
    assert not cities["Chicago_IL"]["current_version"]
    assert cities["Chicago_IL"]["newest_upload"]["status"] == REJECTED
    for text in (CITY, V1, "FAILED", "Chicago_IL", "REJECTED", "not serving", "test:mae=9,512"):
        assert text in table
    # AND the failure queue's message is described, and left in the queue
    queue = data["failure_queue"]
    assert queue["waiting"] == 1
    assert queue["peek"][0]["function"] == "cmtest-Train"
    assert queue["peek"][0]["error"] == "ThrottlingException: Rate exceeded"
    assert queue["peek"][0]["event"] == "ProcessingJobName=cm-cmtest-abc-1"
    assert "1 message(s) waiting" in table and "Rate exceeded" in table
    attributes = aws.sqs.get_queue_attributes(
        QueueUrl=aws.failure_queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )
    assert attributes["Attributes"]["ApproximateNumberOfMessages"] == "1"
    # WHEN one city is asked for THEN its uploads, newest first, with reasons and metrics
    detail = run("status", CITY, "--outputs", outputs, "--json").json()
    assert [u["run"] for u in detail["uploads"]] == [V2, V1]
    assert (detail["uploads"][0]["reason"], detail["uploads"][0]["attempt"]) == (
        "AlgorithmError: [Errno 28] no space",
        2,
    )
    assert detail["uploads"][1]["metrics"] == {"test:mae": 9512.0}
    uploads = run("status", CITY, "--outputs", outputs).out.split("\n", 1)[1]
    assert "[Errno 28]" in uploads  # a reason is text, never rich markup
    assert uploads.index(V2) < uploads.index(V1)


def test_status_pages_through_the_cities_in_id_order(run, aws: Aws, outputs: Path, capsys):
    for city in ("Austin_TX", "Boston_MA", "Chicago_IL", "Dallas_TX", "Denver_CO"):
        seed_run(aws, V1, FAILED, city=city, reason="x")
    first = run("status", "--outputs", outputs, "--limit", "2", "--json").json()
    assert [c["city"] for c in first["cities"]] == ["Austin_TX", "Boston_MA"]
    assert first["next_after"] == "Boston_MA"
    # the text says how to get the next page
    shown = run("status", "--outputs", outputs, "--limit", "2")
    assert "citymodels status --after Boston_MA" in " ".join(shown.err.split())
    seen = [c["city"] for c in first["cities"]]
    after = first["next_after"]
    while after:
        page = run("status", "--outputs", outputs, "--limit", "2", "--after", after, "--json")
        seen += [c["city"] for c in page.json()["cities"]]
        after = page.json()["next_after"]
    assert seen == ["Austin_TX", "Boston_MA", "Chicago_IL", "Dallas_TX", "Denver_CO"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["status", "--outputs", str(outputs), "--limit", "0"])
    assert exit_info.value.code == 2 and "from 1 to 1000" in capsys.readouterr().err


def test_status_counts_runs_in_flight_stuck_and_failed(run, aws: Aws, outputs: Path):
    # GIVEN two runs in flight (one of them a second), a failed one and a published one
    seed_published(aws, V1, 9512.0)
    seed_run(aws, V2, FAILED, reason="AlgorithmError: no space")
    seed_run(aws, V3, "TRAINING", city="Chicago_IL")
    seed_run(aws, V4, "PROCESSING", city="Boston_MA")
    # WHEN status is asked with a bound the newest run in flight is still within
    since = {w.run: w.since for w in aws.registry.watched_runs("PROCESSING")}[V4]
    age = datetime.now(UTC) - datetime.fromisoformat(since.replace("Z", "+00:00"))
    bound = str(age.total_seconds() + 3600)  # V4, and V3 seeded just before, are younger
    counts = run("status", "--outputs", outputs, "--json", "--stuck-after", bound).json()["runs"]
    # THEN both count in flight, none stuck, one failed
    assert {k: counts[k] for k in ("in_flight", "stuck", "failed")} == {
        "in_flight": 2, "stuck": 0, "failed": 1,
    }  # fmt: skip
    # WHEN the bound is 0 s THEN every run in flight is stuck, and the table says so
    counts = run("status", "--outputs", outputs, "--json", "--stuck-after", "0").json()["runs"]
    assert (counts["stuck"], counts["stuck_after_seconds"]) == (2, 0)
    table = run("status", "--outputs", outputs, "--stuck-after", "0").out
    assert "runs: 2 in flight, 2 stuck (in flight over 0 min), 1 failed" in table
    assert "reconcile" in table
    # AND by default the bound is the template's StuckRunSeconds
    default = run("status", "--outputs", outputs, "--json").json()["runs"]
    assert default["stuck_after_seconds"] == float(
        load_yaml(REPO_ROOT / "template.yaml")["Parameters"]["StuckRunSeconds"]["Default"]
    )
    assert default["stuck"] == 0


def describe_stacks_answer(name: str, outputs: dict[str, str]) -> dict[str, Any]:
    stack = {
        "StackName": name,
        "CreationTime": "2026-11-25T00:00:00Z",
        "StackStatus": "CREATE_COMPLETE",
        "Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in outputs.items()],
    }
    return {"Stacks": [stack]}


def test_a_deployed_stack_is_found_by_its_name(aws_credentials):
    # GIVEN CloudFormation's answers (moto's CloudFormation takes seconds to start)
    cloudformation = boto3.client("cloudformation", region_name=REGION)
    outputs = {"DataBucket": BUCKET, "ApiUrl": "https://abc.example/v1/", "RegistryTable": TABLE}
    with Stubber(cloudformation) as stub:
        stub.add_response(
            "describe_stacks", describe_stacks_answer("cmtest", outputs), {"StackName": "cmtest"}
        )
        stub.add_client_error(
            "describe_stacks", "ValidationError", "Stack with id nope does not exist", 400
        )
        found = find_outputs(
            outputs_file=None, stack_name="cmtest", cloudformation=lambda: cloudformation
        )
        # THEN its Outputs are the stack's outputs, and a missing one is named
        assert (found.data_bucket, found.api_url) == (BUCKET, outputs["ApiUrl"])
        assert found.get("FailureQueueUrl") is None
        with pytest.raises(StackError, match=r"\(stack cmtest\) have no EndpointName"):
            _ = found.endpoint_name
        # AND a stack that does not exist is named with the region looked in
        with pytest.raises(StackError, match="stack 'nope' does not exist in us-east-1"):
            find_outputs(
                outputs_file=None, stack_name="nope", cloudformation=lambda: cloudformation
            )


def test_report_names_what_it_cannot_show_in_one_line(run, aws: Aws, outputs: Path):
    assert_one_line_error(
        run("report", "raw/x.csv", "--outputs", outputs), "report", "is not a report key"
    )
    assert_one_line_error(
        run("report", "reports/_rejected/0.json", "--outputs", outputs),
        "report",
        f"no report at s3://{BUCKET}/reports/_rejected/0.json",
    )


def test_models_keeps_whole_versions_and_the_current_marker_at_80_columns(
    run, aws: Aws, outputs: Path, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "80")
    seed_published(aws, V1, 9000.0)
    seed_published(aws, V2, 9500.0)
    out = run("models", CITY, "--outputs", outputs).out
    assert max(map(len, out.splitlines())) <= 80
    (v2_line,) = [line for line in out.splitlines() if V2 in line]
    assert "current" in v2_line
    assert V1 in out and "test:mae=9,000" in out


def test_status_at_80_columns_keeps_versions_whole_and_nothing_collapsed(
    run, aws: Aws, outputs: Path, monkeypatch
):
    # GIVEN a serving city whose newer upload failed, and a city with only a rejection
    monkeypatch.setenv("COLUMNS", "80")
    seed_published(aws, V1, 9512.0)
    seed_run(aws, V2, FAILED, reason="AlgorithmError: no space", attempt=2)
    seed_run(aws, V3, REJECTED, city="Chicago_IL", reason="rejected: 3 invalid row(s)")
    # WHEN the cities are listed on an 80-column terminal
    out = run("status", "--outputs", outputs).out
    lines = out.splitlines()
    # THEN every line fits, each version id is whole on a line, and each city says its state
    assert max(map(len, lines)) <= 80
    assert any(V1 in line for line in lines)
    (city_line,) = [line for line in lines if line.startswith(CITY)]
    assert "FAILED" in city_line and "(2 uploads)" in city_line
    (chicago,) = [line for line in lines if line.startswith("Chicago_IL")]
    assert "REJECTED" in chicago
    assert "not serving" in out and "test:mae=9,512" in out
    assert "┃┃" not in out  # no collapsed table columns
    # AND one city's uploads, newest first, run ids whole, reasons shown
    detail = run("status", CITY, "--outputs", outputs).out
    assert max(map(len, detail.splitlines())) <= 80
    assert f"  run {V2}" in detail and f"  run {V1}" in detail
    assert detail.index(V2) < detail.index(f"  run {V1}")
    assert "AlgorithmError: no space" in detail and "attempt 2" in detail


def test_an_exported_aws_endpoint_url_still_gets_the_local_stacks_region(
    monkeypatch, tmp_path: Path
):
    # GIVEN the local stack's outputs and AWS_ENDPOINT_URL exported as `local up`
    # suggests, and no region or credentials configured anywhere
    from citymodels_devkit.stack import LOCAL_REGION, Stack

    for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    local = write_outputs(
        tmp_path / "outputs.json",
        DataBucket=BUCKET,
        ApiUrl="http://127.0.0.1:9/v1/",
        EndpointName=ENDPOINT,
        RegistryTable=TABLE,
        AwsEndpointUrl="http://127.0.0.1:9",
    )
    # WHEN a command builds its clients
    client = Stack(outputs_file=local).client("dynamodb")
    # THEN they have the local stack's region and credentials, and the exported endpoint
    assert client.meta.region_name == LOCAL_REGION
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    assert client._request_signer._credentials is not None


def test_models_rollback_and_remove(run, aws: Aws, outputs: Path):
    # GIVEN two published versions and a failed run
    seed_published(aws, V1, 9000.0)
    seed_published(aws, V2, 9500.0)
    seed_run(aws, V3, FAILED)
    # THEN models lists the published ones, newest first, V2 current
    versions = run("models", CITY, "--outputs", outputs, "--json").json()["versions"]
    assert [(v["version"], v["current"]) for v in versions] == [(V2, True), (V1, False)]
    assert versions[1]["metrics"] == {"test:mae": 9000.0}
    # WHEN rolled back to V1 THEN V1 is served, pinned
    rolled = run("rollback", CITY, V1, "--outputs", outputs)
    assert rolled.code == 0 and f"serves {V1} from " in rolled.out  # its cut-over instant
    (v1_line,) = [
        line for line in run("models", CITY, "--outputs", outputs).out.splitlines() if V1 in line
    ]
    assert "current (pinned)" in v1_line
    # WHEN removed THEN nothing is served, and the user is told the data is kept
    removed = run("remove", CITY, "--outputs", outputs)
    assert removed.code == 0
    assert "kept" in removed.out
    # and not that it stopped at once: warm functions hold the alias for a few seconds
    assert "AliasCacheSeconds" in " ".join(removed.out.split())
    city = aws.registry.get_city(CITY)
    assert city.removed and not city.serving
    assert [r.run for r in aws.registry.list_runs(CITY)] == [V3, V2, V1]
    status = run("status", "--outputs", outputs, "--json").json()["cities"][0]
    assert status["removed"] is True and status["current_version"] is None
    # AND mistakes are one line each, exit 2, and change nothing
    for argv, command, fragment in [
        (["rollback", CITY, "20261125T040000000Z-" + "0" * 32], "rollback", "has no run"),
        (["rollback", CITY, "latest"], "rollback", "'latest' is not a version id"),
        (["rollback", CITY, V3], "rollback", "was never published (FAILED)"),
        (["status", "Paris"], "status", "nothing was ever uploaded for city 'Paris'"),
        (["status", "New York"], "status", "contains ' ' at position 3"),
        (["models", "9lives"], "models", "must start with a letter"),
        (["remove", "Paris"], "remove", "nothing was ever uploaded"),
    ]:
        assert_one_line_error(run(*argv, "--outputs", outputs), command, fragment)
    assert aws.registry.get_city(CITY).removed


# -- finding the stack, and AWS errors -------------------------------------------------


def test_outputs_are_found_or_their_absence_explained(
    run, aws: Aws, outputs, tmp_path, monkeypatch
):
    seed_published(aws, V1, 9000.0)
    monkeypatch.chdir(tmp_path)
    # no outputs anywhere
    assert_one_line_error(run("status"), "status", "no stack outputs", "--stack-name")
    assert_one_line_error(
        run("status", "--outputs", tmp_path / "nope.json"), "status", "nope.json not found"
    )
    # CITYMODELS_OUTPUTS names the file
    monkeypatch.setenv("CITYMODELS_OUTPUTS", str(outputs))
    assert run("models", CITY, "--json").json()["current_version"] == V1
    monkeypatch.delenv("CITYMODELS_OUTPUTS")
    # .citymodels/outputs.json, as the local stack writes it, is the default
    (tmp_path / ".citymodels").mkdir()
    (tmp_path / ".citymodels" / "outputs.json").write_text(outputs.read_text())
    assert run("models", CITY, "--json").json()["current_version"] == V1
    # --stack-name asks CloudFormation (its answer is faked: see the test above)
    asked: list[str] = []

    def describe(cloudformation: Any, name: str) -> StackOutputs:
        asked.append(name)
        return StackOutputs(json.loads(outputs.read_text()), f"stack {name}")

    monkeypatch.setattr("citymodels_devkit.stack.describe_stack_outputs", describe)
    assert run("models", CITY, "--stack-name", "cmtest", "--json").json()["current_version"] == V1
    assert asked == ["cmtest"]
    assert_one_line_error(
        run("--stack-name", "cmtest", "models", CITY, "--outputs", outputs), "models", "not both"
    )
    # an output a command needs is missing
    no_bucket = write_outputs(tmp_path / "c.json", RegistryTable=TABLE)
    assert_one_line_error(
        run("cleanup", "--yes", "--outputs", no_bucket), "cleanup", "have no DataBucket"
    )


def test_the_local_stack_is_found_from_any_directory_of_the_project(
    run, aws: Aws, outputs, tmp_path, monkeypatch
):
    # GIVEN a project whose root holds the local stack's .citymodels/outputs.json
    seed_published(aws, V1, 9000.0)
    root = tmp_path / "project"
    (root / "docs" / "img").mkdir(parents=True)
    (root / "template.yaml").write_text("Resources: {}\n")
    (root / "pyproject.toml").write_text("[project]\n")
    (root / ".citymodels").mkdir()
    (root / ".citymodels" / "outputs.json").write_text(outputs.read_text())
    # WHEN a command runs from a subdirectory THEN it finds the stack at the root
    monkeypatch.chdir(root / "docs" / "img")
    assert run("models", CITY, "--json").json()["current_version"] == V1
    # and outside any project the message says where it looked
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert_one_line_error(
        run("status"),
        "status",
        f"looked for {elsewhere.resolve()}/.citymodels/outputs.json",
        "is in no citymodels project",
    )


def test_aws_region_is_honoured_as_the_message_suggests(run, monkeypatch, tmp_path):
    # GIVEN no region configured anywhere but AWS_REGION (what Lambda and other SDKs use)
    from citymodels_devkit.stack import Stack

    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    # THEN the stack's clients use it
    assert Stack(outputs_file=tmp_path / "o.json").region_name == "eu-west-1"
    # AND without it the message names a variable boto3 reads
    monkeypatch.delenv("AWS_REGION")
    from botocore.exceptions import NoRegionError

    assert "AWS_DEFAULT_REGION" in str(explain_aws_error(NoRegionError()))


def test_aws_errors_are_one_line(run, aws: Aws, tmp_path):
    missing_bucket = write_outputs(tmp_path / "a.json", DataBucket="no-such-bucket")
    (tmp_path / "houses.csv").write_bytes(upload(raw_rows(60)))
    assert_one_line_error(
        run("onboard", CITY, tmp_path / "houses.csv", "--outputs", missing_bucket),
        "onboard",
        "bucket no-such-bucket does not exist",
    )
    missing_table = write_outputs(tmp_path / "b.json", RegistryTable="no-such-table")
    assert_one_line_error(
        run("keys", "list", "--outputs", missing_table), "keys list", "not found", "--stack-name"
    )


def test_access_denied_and_bad_credentials_read_as_such() -> None:
    def error(code: str, message: str) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": message}}, "PutObject")

    assert explain_aws_error(error("AccessDenied", "Access Denied")) == (
        "access denied to PutObject: Access Denied"
    )
    assert "refused the credentials (ExpiredToken)" in str(
        explain_aws_error(error("ExpiredToken", "The token has expired"))
    )
    assert explain_aws_error(ValueError("x")) is None


def test_an_unreachable_endpoint_is_one_line(run, aws_credentials, tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    local = write_outputs(
        tmp_path / "o.json", RegistryTable=TABLE, AwsEndpointUrl=f"http://127.0.0.1:{port}"
    )
    assert_one_line_error(
        run("status", "--outputs", local),
        "status",
        f"cannot reach http://127.0.0.1:{port}",
        "is the local stack running?",
    )


# -- keys ------------------------------------------------------------------------------


def test_keys_create_prints_the_secret_once_and_stores_only_its_hash(run, aws: Aws, outputs):
    # WHEN a key is created
    result = run(
        "keys", "create", "--cities", "NewYork_NY,San*", "Chicago_IL",
        "--description", "partner A", "--outputs", outputs,
    )  # fmt: skip
    # THEN the secret is printed once, with a warning, and only its hash is stored
    assert result.code == 0
    secret = next(w for w in result.out.split() if w.startswith("cmk_"))
    assert result.out.count(secret) == 1
    assert "shown once" in result.err
    items = aws.dynamodb.scan(TableName=TABLE)["Items"]
    assert secret not in json.dumps(items)
    assert any(item["pk"]["S"] == f"KEY#{hash_secret(secret)}" for item in items)
    key = aws.registry.key_for_secret(secret)
    assert key is not None and key.cities == ["NewYork_NY", "San*", "Chicago_IL"]
    # AND list shows the grants, never the secret
    listed = run("keys", "list", "--outputs", outputs)
    assert key.key_id in listed.out and "partner A" in listed.out
    assert secret not in listed.out
    # AND --json carries the secret of a new key (stack options go before or after the command)
    admin = run("--outputs", outputs, "--json", "keys", "create", "--cities", "*", "--admin")
    assert admin.json()["secret"].startswith("cmk_") and admin.json()["key"]["admin"] is True
    # WHEN revoked THEN the key no longer opens anything
    assert run("keys", "revoke", key.key_id, "--outputs", outputs).code == 0
    assert aws.registry.key_for_secret(secret) is None
    keys = run("keys", "list", "--outputs", outputs, "--json").json()
    assert {k["key_id"]: k["revoked"] for k in keys}[key.key_id] is True
    # AND mistakes are one line
    assert_one_line_error(
        run("keys", "revoke", "nope", "--outputs", outputs), "keys revoke", "no API key with id"
    )
    assert_one_line_error(
        run("keys", "create", "--cities", "New York", "--outputs", outputs),
        "keys create",
        "city pattern 'New York'",
    )


# -- access policy (notebook section 9) ------------------------------------------------


def test_access_policy_limits_invoke_endpoint_to_the_cities_models(run, aws: Aws, outputs):
    # WHEN the account is given
    result = run(
        "access", "policy", "--cities", "NewYork_NY", "--account", "111122223333",
        "--region", "eu-west-1", "--outputs", outputs,
    )  # fmt: skip
    # THEN the policy allows InvokeEndpoint on the stack's endpoint for that city's models
    assert result.code == 0
    statement = json.loads(result.out)["Statement"][0]
    assert statement["Action"] == "sagemaker:InvokeEndpoint"
    assert statement["Resource"] == f"arn:aws:sagemaker:eu-west-1:111122223333:endpoint/{ENDPOINT}"
    assert statement["Condition"] == {"StringLike": {"sagemaker:TargetModel": ["NewYork_NY/*"]}}
    # WHEN it is not THEN STS tells it
    policy = run("access", "policy", "--cities", "San*", "--outputs", outputs, "--json").json()
    statement = policy["Statement"][0]
    assert statement["Resource"] == f"arn:aws:sagemaker:{REGION}:123456789012:endpoint/{ENDPOINT}"
    assert statement["Condition"]["StringLike"]["sagemaker:TargetModel"] == ["San*/*"]
    # AND mistakes are one line
    for argv, fragment in [
        (["--cities", "*Y", "--account", "1"], "'*Y'"),
        (["--cities", "A", "--account", "1"], "12 digits"),
    ]:
        result = run("access", "policy", *argv, "--outputs", outputs)
        assert_one_line_error(result, "access policy", fragment)


def test_access_policy_with_an_endpoint_arn_needs_no_stack(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    arn = "arn:aws-cn:sagemaker:cn-north-1:111122223333:endpoint/cm"
    policy = run("access", "policy", "--cities", "A", "B", "--endpoint-arn", arn).json()
    assert policy["Statement"][0]["Resource"] == arn
    assert policy["Statement"][0]["Condition"]["StringLike"]["sagemaker:TargetModel"] == [
        "A/*",
        "B/*",
    ]


# -- images ----------------------------------------------------------------------------


@pytest.fixture
def fake_sdk(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """A stand-in ``sagemaker.image_uris`` recording its calls."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def retrieve(framework: str, **kwargs: Any) -> str:
        calls.append((framework, kwargs))
        if kwargs["region"] == "mars-1":
            raise ValueError("Unsupported region: mars-1. Supported region(s): us-east-1.")
        image = {"sklearn": f"sagemaker-scikit-learn:{kwargs.get('version')}-cpu-py3"}.get(
            framework, "linear-learner:1"
        )
        return f"123.dkr.ecr.{kwargs['region']}.amazonaws.com/{image}"

    package = types.ModuleType("sagemaker")
    module = types.ModuleType("sagemaker.image_uris")
    module.retrieve = retrieve  # type: ignore[attr-defined]
    package.image_uris = module  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sagemaker", package)
    monkeypatch.setitem(sys.modules, "sagemaker.image_uris", module)
    return calls


def test_images_prints_both_uris_and_the_sam_overrides(run, fake_sdk):
    result = run("images", "--region", "eu-west-1")
    assert result.code == 0
    sklearn = "123.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
    learner = "123.dkr.ecr.eu-west-1.amazonaws.com/linear-learner:1"
    assert (
        f"sam deploy --parameter-overrides SklearnImageUri={sklearn} "
        f"LinearLearnerImageUri={learner}"
    ) in result.out.splitlines()
    assert fake_sdk == [
        ("sklearn", {"region": "eu-west-1", "version": "1.2-1", "py_version": "py3"}),
        ("linear-learner", {"region": "eu-west-1"}),
    ]
    data = run("images", "--region", "eu-west-1", "--sklearn-version", "1.4-2", "--json").json()
    assert data["SklearnImageUri"].endswith("sagemaker-scikit-learn:1.4-2-cpu-py3")
    assert data["LinearLearnerImageUri"] == learner
    assert_one_line_error(run("images", "--region", "mars-1"), "images", "Unsupported region")


def test_images_without_the_sdk_says_how_to_install_it(run, monkeypatch):
    monkeypatch.setitem(sys.modules, "sagemaker", None)
    monkeypatch.setitem(sys.modules, "sagemaker.image_uris", None)
    assert_one_line_error(
        run("images", "--region", "eu-west-1"),
        "images",
        "install the sdk extra: pip install -e '.[sdk]'",
    )


# -- cleanup (notebook section 10) -----------------------------------------------------


def fill_with_history(aws: Aws) -> int:
    """Give the versioned bucket old versions and delete markers; return how many entries."""
    aws.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    for i in range(3):
        aws.s3.put_object(Bucket=BUCKET, Key=f"raw/{CITY}/houses.csv", Body=f"v{i}".encode())
        aws.s3.put_object(Bucket=BUCKET, Key=f"mme/{CITY}/{V1}.tar.gz", Body=b"model")
    aws.s3.delete_object(Bucket=BUCKET, Key=f"raw/{CITY}/houses.csv")
    listing = aws.s3.list_object_versions(Bucket=BUCKET)
    assert listing["DeleteMarkers"] and len(listing["Versions"]) == 6
    return len(listing["Versions"]) + len(listing["DeleteMarkers"])


def test_cleanup_empties_every_version_and_marker_then_says_what_next(run, aws: Aws, outputs):
    # GIVEN a versioned bucket with history
    entries = fill_with_history(aws)
    # WHEN cleanup is not confirmed and cannot ask THEN nothing is deleted
    with Path(os.devnull).open() as not_a_terminal:
        sys_stdin, sys.stdin = sys.stdin, not_a_terminal
        try:
            refused = run("cleanup", "--outputs", outputs)
        finally:
            sys.stdin = sys_stdin
    assert_one_line_error(refused, "cleanup", "without --yes")
    assert len(aws.s3.list_object_versions(Bucket=BUCKET)["Versions"]) == 6
    # WHEN confirmed THEN every version and marker is gone, and the next steps are shown
    result = run("cleanup", "--yes", "--outputs", outputs)
    assert result.code == 0
    listing = aws.s3.list_object_versions(Bucket=BUCKET)
    assert "Versions" not in listing and "DeleteMarkers" not in listing
    assert f"deleted {entries} object version(s)" in result.out
    assert "sam delete --stack-name" in result.out
    assert f"aws s3api delete-bucket --bucket {BUCKET}" in result.out
    # AND in batches no larger than asked
    entries = fill_with_history(aws)
    batches: list[int] = []
    assert empty_bucket(aws.s3, BUCKET, batch_size=3, on_deleted=batches.append) == entries
    assert max(batches) <= 3 and sum(batches) == entries
    assert "Versions" not in aws.s3.list_object_versions(Bucket=BUCKET)
    # AND for the local stack, the next step is stopping it
    local = {**json.loads(outputs.read_text()), "AwsEndpointUrl": "http://127.0.0.1:4566"}
    outputs.write_text(json.dumps(local))
    s3 = f"https://s3.{REGION}.amazonaws.com"  # reaches moto, where the local stack would be
    result = run("cleanup", "--yes", "--outputs", outputs, "--endpoint-url", s3, "--json")
    assert result.json() == {
        "bucket": BUCKET,
        "deleted": 0,
        "next_steps": ["citymodels local down"],
    }


# -- predict ---------------------------------------------------------------------------


@dataclass
class FakeApi:
    url: str
    requests: list[dict[str, Any]]
    answer: tuple[int, dict[str, Any]]


@pytest.fixture
def api() -> Iterator[FakeApi]:
    """A tiny HTTP server answering ``POST .../predictions`` with a canned body."""
    fake = FakeApi(url="", requests=[], answer=(200, {}))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            body = json.loads(self.rfile.read(length))
            headers = {k.lower(): v for k, v in self.headers.items()}
            fake.requests.append({"path": self.path, "headers": headers, "body": body})
            status, answer = fake.answer
            if status == 200:
                prices = [{"price": 100_000.0 + i} for i in range(len(body["instances"]))]
                answer = {"city": CITY, "model_version": V1, "predictions": prices}
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:  # keep the test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/Prod/"
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def api_outputs(api: FakeApi, tmp_path: Path) -> Path:
    return write_outputs(
        tmp_path / "api.json",
        DataBucket=BUCKET,
        ApiUrl=api.url,
        EndpointName=ENDPOINT,
        RegistryTable=TABLE,
    )


def test_predict_sends_the_house_with_the_key_and_prints_the_price(run, api, api_outputs):
    result = run("predict", CITY, *HOUSE, "--api-key", "cmk_test", "--outputs", api_outputs)
    assert result.code == 0, result.err
    (request,) = api.requests
    assert request["path"] == f"/Prod/cities/{CITY}/predictions"
    assert request["headers"]["authorization"] == "Bearer cmk_test"
    assert request["headers"]["content-type"] == "application/json"
    assert request["body"] == {
        "instances": [
            {
                "YEAR_BUILT": 1995,
                "SQUARE_FEET": 2500,
                "NUM_BEDROOMS": 3,
                "NUM_BATHROOMS": 2.5,
                "LOT_ACRES": 0.5,
                "GARAGE_SPACES": 2,
                "FRONT_PORCH": "y",
                "DECK": "n",
            }
        ]
    }
    assert "$100,000" in result.out and V1 in result.out and " ms" in result.out


def test_predict_json_from_a_csv_file_keeps_the_actual_prices(
    run, api, api_outputs, tmp_path, monkeypatch
):
    monkeypatch.setenv("CITYMODELS_API_KEY", "cmk_from_env")
    (tmp_path / "houses.csv").write_bytes(upload(raw_rows(3), header=True))
    result = run(
        "predict", CITY, "--csv", tmp_path / "houses.csv", "--outputs", api_outputs, "--json"
    )
    data = result.json()
    assert data["model_version"] == V1 and data["city"] == CITY
    assert [p["price"] for p in data["predictions"]] == [100_000.0, 100_001.0, 100_002.0]
    assert all(p["actual"] > 0 for p in data["predictions"])
    # one shape whatever the number of rows: a list per request
    assert data["model_versions"] == [V1]
    assert isinstance(data["latency_ms"], list) and len(data["latency_ms"]) == 1
    assert api.requests[0]["headers"]["authorization"] == "Bearer cmk_from_env"
    assert "PRICE" not in api.requests[0]["body"]["instances"][0]


def test_predict_rows_from_a_json_file(run, api, api_outputs, tmp_path):
    house = dict(pair.split("=") for pair in HOUSE)
    (tmp_path / "rows.json").write_text(json.dumps({"instances": [house, house]}))
    result = run(
        "predict", CITY, "--json-file", tmp_path / "rows.json", "--api-key", "k",
        "--outputs", api_outputs, "--json",
    )  # fmt: skip
    assert len(result.json()["predictions"]) == 2
    assert len(api.requests[0]["body"]["instances"]) == 2


def test_predict_reports_the_api_refusal_in_one_line(run, api, api_outputs):
    api.answer = (403, {"code": "forbidden", "message": "the key has no access to NewYork_NY"})
    result = run("predict", CITY, *HOUSE, "--api-key", "cmk_x", "--outputs", api_outputs)
    assert_one_line_error(result, "predict", "the API answered 403", "no access to NewYork_NY")


def test_predict_checks_the_house_before_sending_it(run, api, api_outputs):
    bad = [p for p in HOUSE if not p.startswith("DECK")] + ["DECK=maybe"]
    result = run("predict", CITY, *bad, "--api-key", "k", "--outputs", api_outputs)
    assert_one_line_error(result, "predict", "DECK must be 'y' or 'n'")
    missing = run("predict", CITY, *HOUSE[:-1], "--api-key", "k", "--outputs", api_outputs)
    assert_one_line_error(missing, "predict", "missing DECK")
    nokey = run("predict", CITY, *HOUSE, "--outputs", api_outputs)
    assert_one_line_error(nokey, "predict", "no API key")
    assert api.requests == []


def test_predict_against_no_api_is_one_line(run, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nothing = write_outputs(tmp_path / "o.json", ApiUrl=f"http://127.0.0.1:{port}")
    result = run("predict", CITY, *HOUSE, "--api-key", "k", "--outputs", nothing)
    assert_one_line_error(result, "predict", f"cannot reach the API at http://127.0.0.1:{port}")


# -- the local commands stay as they were ----------------------------------------------


def test_gen_data_and_demo_keep_their_help(capsys):
    for command, text in (("gen-data", "ground_truth.json"), ("demo", "ground truth")):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0
        assert text in capsys.readouterr().out


def test_gen_data_json_says_what_it_wrote_and_warns_of_too_few_rows(run, tmp_path):
    result = run("gen-data", "--cities", "2", "--rows", "10", "--out", tmp_path, "--json")
    assert result.code == 0
    data = result.json()
    assert data["cities"] == ["NewYork_NY", "LosAngeles_CA"] and data["rows"] == 10
    assert all(Path(f).exists() for f in data["files"])
    # 10 rows: every upload of these would be rejected, and the user is told so
    assert "under the 50 rows an upload needs" in " ".join(result.err.split())


def test_onboard_wait_does_not_say_the_status_twice(run, aws: Aws, outputs, tmp_path, monkeypatch):
    key = f"raw/{CITY}/houses.csv"
    (tmp_path / "houses.csv").write_bytes(upload(raw_rows(60)))
    stack_rejects_the_upload(aws, monkeypatch, key, "rejected: 3 rows")
    result = run(
        "onboard", CITY, tmp_path / "houses.csv", "--outputs", outputs, "--wait",
        "--interval", "0.01",
    )  # fmt: skip
    assert result.code == 1
    text = " ".join(result.out.split())
    assert f"run {V2}: REJECTED: 3 rows" in text
    assert text.count("REJECTED") == 1


def test_gen_data_writes_the_cities(run, tmp_path):
    result = run("gen-data", "--cities", "2", "--rows", "60", "--out", tmp_path / "data")
    assert result.code == 0
    assert len(list((tmp_path / "data").glob("*.csv"))) == 2
