"""moto's per-run costs removed (``local/hotpaths.py``): the same answers, less work."""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

import boto3
import jsonpath_ng.ext
import pytest
from moto import mock_aws
from moto.dynamodb.parsing.expressions import UpdateExpressionParser
from moto.events.utils import EventTemplateParser
from moto.s3.models import FakeTableStorageBucket, S3Backend

from citymodels_devkit.local import hotpaths

BUCKET = "citymodels-listing"
NAMES = [
    "in/a.csv",
    "in/a.csv.bak",
    "in/b/1.csv",
    "in/b/2.csv",
    "in/c/deep/x",
    "inx",
    "jobs/j1/code/bundle.tar.gz",
    "jobs/j1/output/model.tar.gz",
    "jobs/j2/output/model.tar.gz",
    "out/é/ü.txt",
]


def moto(monkeypatch: pytest.MonkeyPatch) -> Any:
    """moto in-process, with test credentials and no endpoint of a running stack."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    return mock_aws()


def create_table(ddb: Any) -> None:
    """Table ``t``, keyed by ``pk``."""
    ddb.create_table(
        TableName="t",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


def count_depth_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one each time moto counts a queue's messages (its
    ``ApproximateNumberOfMessages``, a walk over the whole queue)."""
    from moto.sqs.models import Queue

    reads: list[int] = []
    original = Queue.approximate_number_of_messages
    monkeypatch.setattr(
        Queue,
        "approximate_number_of_messages",
        property(lambda queue: reads.append(1) or original.fget(queue)),  # type: ignore[attr-defined]
    )
    return reads


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Any:
    with moto(monkeypatch):
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        for name in NAMES:
            client.put_object(Bucket=BUCKET, Key=name, Body=name.encode())
        client.put_object(Bucket=BUCKET, Key="in/b/1.csv", Body=b"second version")
        client.delete_object(Bucket=BUCKET, Key="in/b/2.csv")  # a delete marker on top
        yield client


def listing(client: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, **kwargs)
    answer = []
    for page in pages:
        answer += [(o["Key"], o["ETag"], o["Size"]) for o in page.get("Contents", [])]
        answer += [("prefix", p["Prefix"]) for p in page.get("CommonPrefixes", [])]
    return answer


def test_a_listing_by_prefix_is_moto_s_own(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = [
        dict(Prefix=prefix, **extra)
        for prefix, extra in itertools.product(
            ["in/", "in", "in/a.csv", "in/b/", "jobs/j1/", "out/é/", "nothing/", ""],
            [{}, {"Delimiter": "/"}, {"PaginationConfig": {"PageSize": 1}}],
        )
    ]
    # GIVEN moto's answers to every case
    expected = [listing(s3, **case) for case in cases]
    etag = f'"{hashlib.md5(b"second version").hexdigest()}"'
    assert ("in/b/1.csv", etag, 14) in expected[0]  # the last version
    assert all(entry[0] != "in/b/2.csv" for entry in expected[0])  # deleted
    # WHEN the names are filtered before moto reads the keys
    monkeypatch.setattr(
        S3Backend,
        "list_objects",
        hotpaths.list_objects(S3Backend.list_objects, (FakeTableStorageBucket,)),
    )
    # THEN every answer is the same, in the same order
    assert [listing(s3, **case) for case in cases] == expected
    # AND a deleted key under the prefix meanwhile is skipped, as moto skips it
    s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": "in/a.csv"}]})
    assert [e[0] for e in listing(s3, Prefix="in/a")] == ["in/a.csv.bak"]


def test_only_the_prefix_s_keys_are_read(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[int] = []
    original = S3Backend.list_objects

    def counting(backend: Any, bucket: Any, *args: Any) -> Any:
        read.append(sum(1 for _ in bucket.keys.items()))
        return original(backend, bucket, *args)

    monkeypatch.setattr(S3Backend, "list_objects", hotpaths.list_objects(counting))
    listing(s3, Prefix="jobs/")
    listing(s3)  # no prefix: moto reads the bucket as it is
    assert read == [3, len(NAMES)]


def test_an_update_expression_parsed_once_serves_every_item(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hotpaths.install()
    with moto(monkeypatch):
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        create_table(ddb)
        expression = "SET n = if_not_exists(n, :zero) + :one, tag = :tag"
        for pk, tag in itertools.product(("a", "b"), ("x", "y", "z")):
            ddb.update_item(
                TableName="t",
                Key={"pk": {"S": pk}},
                UpdateExpression=expression,
                ExpressionAttributeValues={
                    ":zero": {"N": "0"},
                    ":one": {"N": "1"},
                    ":tag": {"S": f"{pk}{tag}"},
                },
            )
        items = {
            pk: ddb.get_item(TableName="t", Key={"pk": {"S": pk}})["Item"] for pk in ("a", "b")
        }
    # the kept tree was never changed by the validation of another item
    assert items["a"]["n"] == {"N": "3"} and items["a"]["tag"] == {"S": "az"}
    assert items["b"]["n"] == {"N": "3"} and items["b"]["tag"] == {"S": "bz"}
    assert UpdateExpressionParser.make(expression) is UpdateExpressionParser.make(expression)


def test_event_input_paths_are_parsed_once() -> None:
    hotpaths.install()
    template = '{"bucket": "<bucket>", "key": "<key>"}'
    paths = {"bucket": "$.detail.bucket.name", "key": "$.detail.object.key"}
    events = [
        {"detail": {"bucket": {"name": "b"}, "object": {"key": f"k{i}"}}, "ingestion-time": 0}
        for i in range(3)
    ]
    answers = [EventTemplateParser.parse(template, paths, event) for event in events]
    assert answers == [{"bucket": "b", "key": f"k{i}"} for i in range(3)]
    assert jsonpath_ng.ext.parse("$.detail.object.key") is jsonpath_ng.ext.parse(
        "$.detail.object.key"
    )


def test_a_receive_checks_retention_without_reading_every_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from moto.sqs.models import SQSBackend

    monkeypatch.setattr(SQSBackend, "is_message_valid_based_on_retention_period", hotpaths.retained)
    depth_reads = count_depth_reads(monkeypatch)
    with moto(monkeypatch):
        sqs = boto3.client("sqs", region_name="us-east-1")
        kept = sqs.create_queue(QueueName="kept")["QueueUrl"]
        short = sqs.create_queue(QueueName="short", Attributes={"MessageRetentionPeriod": "60"})[
            "QueueUrl"
        ]
        for i in range(5):
            sqs.send_message(QueueUrl=kept, MessageBody=f"m{i}")
        sqs.send_message(QueueUrl=short, MessageBody="old")
        depth_reads.clear()  # (moto's sends read it: not our concern)
        got = sqs.receive_message(QueueUrl=kept, MaxNumberOfMessages=10)["Messages"]
        assert sorted(m["Body"] for m in got) == [f"m{i}" for i in range(5)]
        assert depth_reads == []  # no walk over the queue per message received
        # a message past its queue's retention period is not delivered, as in moto
        from moto.sqs.models import sqs_backends

        queue = sqs_backends["123456789012"]["us-east-1"].get_queue("short")
        queue._messages[0].sent_timestamp -= 61_000
        assert "Messages" not in sqs.receive_message(QueueUrl=short)


def test_update_validators_build_their_handlers_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.dynamodb.parsing import validators

    hotpaths.install()
    built: list[str] = []
    original = validators.ExpressionAttributeValueProcessor._processing_map

    def counted(self: Any) -> Any:
        built.append(type(self).__name__)
        return original(self)

    monkeypatch.setattr(validators.ExpressionAttributeValueProcessor, "_processing_map", counted)
    with moto(monkeypatch):
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        create_table(ddb)
        ddb.put_item(TableName="t", Item={"pk": {"S": "a"}})
        values = {f":v{i}": {"N": str(i)} for i in range(12)}
        ddb.update_item(
            TableName="t",
            Key={"pk": {"S": "a"}},
            UpdateExpression="SET " + ", ".join(f"a{i} = :v{i}" for i in range(12)),
            ExpressionAttributeValues=values,
        )
        item = ddb.get_item(TableName="t", Key={"pk": {"S": "a"}})["Item"]
    assert {name: item[name] for name in item if name != "pk"} == {
        f"a{i}": {"N": str(i)} for i in range(12)
    }
    assert len(built) == 1  # one validator, its map built once for every node it visits


def test_a_send_reads_only_the_attribute_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.sqs.models import Queue, SQSBackend

    monkeypatch.setattr(SQSBackend, "send_message", hotpaths.send_message(SQSBackend.send_message))
    full = Queue.attributes.fget  # type: ignore[attr-defined]
    monkeypatch.setattr(Queue, "attributes", hotpaths.queue_attributes(full))
    depth_reads = count_depth_reads(monkeypatch)
    with moto(monkeypatch):
        sqs = boto3.client("sqs", region_name="us-east-1")
        plain = sqs.create_queue(QueueName="plain")["QueueUrl"]
        fifo = sqs.create_queue(
            QueueName="dedup.fifo",
            Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"},
        )["QueueUrl"]
        depth_reads.clear()
        for _ in range(3):
            sqs.send_message(QueueUrl=plain, MessageBody="same")
            sqs.send_message(QueueUrl=fifo, MessageBody="same", MessageGroupId="g")
        assert depth_reads == []  # no walk over the queue per message sent
        # the FIFO queue still deduplicates by content, the other keeps every copy
        counts = {
            url: sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
            for url in (plain, fifo)
        }
    assert counts[plain]["ApproximateNumberOfMessages"] == "3"
    assert counts[fifo]["ApproximateNumberOfMessages"] == "1"
    assert counts[fifo]["ContentBasedDeduplication"] == "true"  # the whole map, outside sends
