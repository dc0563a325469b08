"""The aws process's request trace (``local/trace.py``): off until started, then every
request counted and timed by operation and caller, and the app's own methods back once
stopped."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

from citymodels_devkit.local import aws
from citymodels_devkit.local.aws import LocalAwsServer, build_aws_app, build_dynamodb_app
from citymodels_devkit.local.processes import LOCAL_STACK_AGENT
from citymodels_devkit.local.trace import TraceControl, merge_reports

BUCKET = "cmtrace-data"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server = LocalAwsServer(build_aws_app(max_job_workers=1), port=0).start()
    try:
        yield server.url
    finally:
        server.stop()


def client(url: str, service: str, agent: str | None = None) -> Any:
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}, user_agent_extra=agent),
    )


def test_requests_are_counted_by_operation_and_caller_while_traced(url: str) -> None:
    original = (aws.AwsApp.__call__, aws.MotoApp.__call__, aws._MotoEnviron.__call__)
    control = TraceControl()
    assert control.take() is None  # never started: nothing to report
    control.start({"cm-test-client": "test"})
    assert (aws.AwsApp.__call__, aws.MotoApp.__call__, aws._MotoEnviron.__call__) != original
    try:
        mine = client(url, "s3", "cm-test-client")
        mine.create_bucket(Bucket=BUCKET)
        mine.put_object(Bucket=BUCKET, Key="a/b.csv", Body=b"x")
        client(url, "s3").get_object(Bucket=BUCKET, Key="a/b.csv")
        client(url, "s3", LOCAL_STACK_AGENT).get_object(Bucket=BUCKET, Key="a/b.csv")
        client(url, "dynamodb").list_tables()
        client(url, "sqs", LOCAL_STACK_AGENT).list_queues()
    finally:
        report = control.take()
    assert (aws.AwsApp.__call__, aws.MotoApp.__call__, aws._MotoEnviron.__call__) == original
    assert not any(  # moto's own application unwrapped too
        type(getattr(obj, "app", None)).__name__ == "_TimedMoto"
        for obj in gc.get_objects()
        if isinstance(obj, aws._MotoEnviron)
    )
    assert report is not None
    operations = report["operations"]
    assert operations["test: S3 PUT object"]["count"] == 1
    assert operations["S3 GET object"]["count"] == 2
    assert operations["ListTables (DynamoDB)"]["count"] == 1
    assert operations["ListQueues (AmazonSQS)"]["count"] == 1
    for row in operations.values():  # every request here is moto's
        assert 0 < row["moto_own_s_total"] <= row["moto_s_total"] <= row["server_s_total"]
    callers = report["callers"]
    assert callers["test"]["operations"] == {"test: S3 PUT bucket": 1, "test: S3 PUT object": 1}
    assert callers["application"]["operations"] == {
        "ListTables (DynamoDB)": 1,
        "S3 GET object": 1,
    }
    assert callers["platform"]["operations"] == {"S3 GET object": 1}  # a model load
    assert callers["local"]["operations"] == {"ListQueues (AmazonSQS)": 1}
    assert control.take() is None  # stopped


def test_a_trace_started_again_starts_afresh(url: str) -> None:
    control = TraceControl()
    control.start()
    try:
        client(url, "dynamodb").list_tables()
        control.start()
        client(url, "s3").list_buckets()
    finally:
        report = control.take()
    assert report is not None
    assert {name: row["count"] for name, row in report["operations"].items()} == {
        "S3 GET bucket": 1
    }


def test_a_forwarded_request_is_counted_once_where_it_is_served() -> None:
    tables = LocalAwsServer(build_dynamodb_app(), port=0).start()
    front = LocalAwsServer(
        build_aws_app(max_job_workers=1, dynamodb_url=tables.url), port=0
    ).start()
    control = TraceControl()
    control.start()
    try:
        client(front.url, "dynamodb").list_tables()  # forwarded
        client(tables.url, "dynamodb").list_tables()  # as the functions call it
    finally:
        report = control.take()
        front.stop()
        tables.stop()
    assert report is not None
    row = report["operations"]["ListTables (DynamoDB)"]
    assert row["count"] == 2
    assert 0 < row["moto_own_s_total"] <= row["server_s_total"]


def test_the_processes_reports_merge_into_one() -> None:
    def row(count: int, total: float) -> dict[str, Any]:
        return {"count": count, "server_s_total": total, "server_ms_p50": total / count * 1e3}

    def report(window: float, rows: dict[str, tuple[int, float]]) -> dict[str, Any]:
        """One process's report: its operations, every call the application's."""
        return {
            "window_s": window,
            "operations": {name: row(*value) for name, value in rows.items()},
            "callers": {
                "application": {
                    "count": sum(count for count, _ in rows.values()),
                    "server_s_total": sum(total for _, total in rows.values()),
                    "operations": {name: count for name, (count, _) in rows.items()},
                }
            },
        }

    aws_report = report(10.0, {"S3 GET object": (4, 0.4), "ListTables (DynamoDB)": (1, 0.1)})
    tables_report = report(
        10.5, {"ListTables (DynamoDB)": (3, 0.9), "GetItem (DynamoDB)": (2, 0.2)}
    )
    merged = merge_reports([aws_report, tables_report])
    assert merged["window_s"] == 10.5
    assert list(merged["operations"]) == [
        "ListTables (DynamoDB)",
        "S3 GET object",
        "GetItem (DynamoDB)",
    ]
    tables_row = merged["operations"]["ListTables (DynamoDB)"]
    assert tables_row["count"] == 4 and tables_row["server_s_total"] == pytest.approx(1.0)
    assert tables_row["server_ms_p50"] == pytest.approx(300.0)  # the busier one's
    assert merged["callers"]["application"] == {
        "count": 10,
        "server_s_total": pytest.approx(1.6),
        "operations": {"S3 GET object": 4, "ListTables (DynamoDB)": 4, "GetItem (DynamoDB)": 2},
    }
