"""The local AWS endpoint keeps its state: snapshots, the journal, restore.

Each test runs the AWS endpoint with a state directory, changes things through boto3
as the application does, then "crashes" it (the journal is closed with no snapshot and
moto's backends are wiped, as a SIGKILL leaves them) or stops it cleanly, starts a new
endpoint on the same directory and looks at what a client sees.
"""

from __future__ import annotations

import json
import pickle
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from citymodels_devkit.local.aws import AwsApp, LocalAwsServer, build_aws_app, build_dynamodb_app
from citymodels_devkit.local.persistence import StateStore, StateUnreadable, read_journal
from citymodels_devkit.local.s3events import MotoEventBus
from citymodels_devkit.local.sagemaker.executors import ContainerRun
from citymodels_devkit.local.sagemaker.models import IN_PROGRESS, RESTARTED_MESSAGE, JobService
from citymodels_devkit.local.sagemaker.runner import COMPLETED

REGION = "us-east-1"
ACCOUNT = "123456789012"
BUCKET = "cmstate-data"
TABLE = "cmstate-registry"
QUEUE = "cmstate-events"


@pytest.fixture(autouse=True)
def clean_moto() -> Iterator[None]:
    """Every test starts and ends with moto empty (the backends are process-wide)."""
    from moto.core.base_backend import BackendDict

    BackendDict.reset()
    yield
    BackendDict.reset()


class Endpoint:
    """The AWS endpoint on a state directory, as a client sees it."""

    def __init__(
        self, state: Path, *, fresh: bool = False, events: Any = None, jobs: Any = None
    ) -> None:
        self.app: AwsApp = build_aws_app(
            event_buckets=[BUCKET], state_dir=state, fresh=fresh, events=events, jobs=jobs
        )
        self.server = LocalAwsServer(self.app, port=0).start()

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.server.url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"max_attempts": 1}),
        )

    def stop(self) -> None:
        """``local down``: a last snapshot, then stop."""
        self.server.stop()

    def crash(self) -> None:
        """What a SIGKILL leaves: the journal as written, no snapshot, memory gone."""
        from moto.core.base_backend import BackendDict

        assert self.app.store is not None
        self.app.store.close(snapshot=False)
        self.server.stop()
        BackendDict.reset()


def create_resources(endpoint: Endpoint) -> str:
    """A versioned bucket, a table and a queue, then a checkpoint (as the stack does)."""
    s3 = endpoint.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    endpoint.client("dynamodb").create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    url = str(endpoint.client("sqs").create_queue(QueueName=QUEUE)["QueueUrl"])
    endpoint.app.checkpoint()
    return url


def test_after_a_crash_every_acknowledged_change_is_back_with_the_ids_clients_saw(
    tmp_path: Path,
) -> None:
    # GIVEN an endpoint that took a snapshot, then accepted changes of every kind
    first = Endpoint(tmp_path)
    queue = create_resources(first)
    s3, dynamodb, sqs = first.client("s3"), first.client("dynamodb"), first.client("sqs")
    old = s3.put_object(Bucket=BUCKET, Key="raw/A/x.csv", Body=b"first")["VersionId"]
    new = s3.put_object(Bucket=BUCKET, Key="raw/A/x.csv", Body=b"second")["VersionId"]
    s3.copy_object(
        Bucket=BUCKET,
        Key="inputs/A/run/x.csv",
        CopySource={"Bucket": BUCKET, "Key": "raw/A/x.csv", "VersionId": old},
    )
    s3.put_object(Bucket=BUCKET, Key="gone.csv", Body=b"x")
    s3.delete_object(Bucket=BUCKET, Key="gone.csv")
    dynamodb.put_item(TableName=TABLE, Item={"pk": {"S": "CITY#A"}, "n": {"N": "1"}})
    dynamodb.update_item(
        TableName=TABLE,
        Key={"pk": {"S": "CITY#A"}},
        UpdateExpression="ADD n :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
    )
    dynamodb.transact_write_items(
        TransactItems=[
            {"Put": {"TableName": TABLE, "Item": {"pk": {"S": "KEY#1"}}}},
            {"Put": {"TableName": TABLE, "Item": {"pk": {"S": "KEYS"}}}},
        ]
    )
    dynamodb.put_item(TableName=TABLE, Item={"pk": {"S": "OLD"}})
    dynamodb.batch_write_item(
        RequestItems={
            TABLE: [
                {"PutRequest": {"Item": {"pk": {"S": "BATCH"}}}},
                {"DeleteRequest": {"Key": {"pk": {"S": "OLD"}}}},
            ]
        }
    )
    with pytest.raises(dynamodb.exceptions.ConditionalCheckFailedException):
        dynamodb.put_item(
            TableName=TABLE,
            Item={"pk": {"S": "KEYS"}, "lost": {"BOOL": True}},
            ConditionExpression="attribute_not_exists(pk)",
        )
    for body in ("one", "two", "three"):
        sqs.send_message(QueueUrl=queue, MessageBody=body)
    received = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=2, VisibilityTimeout=600)
    handled, in_flight = received["Messages"]
    sqs.delete_message(QueueUrl=queue, ReceiptHandle=handled["ReceiptHandle"])

    # WHEN the stack dies and starts again
    first.crash()
    second = Endpoint(tmp_path)
    try:
        s3, dynamodb, sqs = second.client("s3"), second.client("dynamodb"), second.client("sqs")
        assert second.app.restored is not None and second.app.restored.records > 0

        # THEN every object is back, each version under the id its writer was given
        get = s3.get_object
        assert get(Bucket=BUCKET, Key="raw/A/x.csv", VersionId=old)["Body"].read() == b"first"
        assert get(Bucket=BUCKET, Key="raw/A/x.csv", VersionId=new)["Body"].read() == b"second"
        assert get(Bucket=BUCKET, Key="inputs/A/run/x.csv")["Body"].read() == b"first"
        with pytest.raises(s3.exceptions.NoSuchKey):
            s3.get_object(Bucket=BUCKET, Key="gone.csv")
        # ...the table holds the writes that succeeded, and only those
        item = dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": "CITY#A"}})["Item"]
        assert item["n"] == {"N": "2"}
        keys = dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": "KEYS"}})["Item"]
        assert "lost" not in keys
        for present, absent in (("KEY#1", "OLD"), ("BATCH", "OLD")):
            assert "Item" in dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": present}})
            assert "Item" not in dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": absent}})
        # ...and the messages not deleted are delivered, the one in flight at once
        bodies = {
            m["Body"]
            for m in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
        }
        assert bodies == {"one", "two", "three"} - {handled["Body"]}
        assert in_flight["Body"] in bodies
    finally:
        second.stop()


def test_local_down_leaves_a_snapshot_and_the_next_start_replays_nothing(tmp_path: Path) -> None:
    first = Endpoint(tmp_path)
    create_resources(first)
    first.client("s3").put_object(Bucket=BUCKET, Key="raw/B/x.csv", Body=b"kept")
    first.stop()
    assert [path.stat().st_size for path in tmp_path.glob("journal-*.log")] == [0]

    from moto.core.base_backend import BackendDict

    BackendDict.reset()
    second = Endpoint(tmp_path)
    try:
        assert second.app.restored is not None
        assert second.app.restored.snapshot and second.app.restored.records == 0
        body = second.client("s3").get_object(Bucket=BUCKET, Key="raw/B/x.csv")["Body"].read()
        assert body == b"kept"
    finally:
        second.stop()


def test_fresh_starts_empty(tmp_path: Path) -> None:
    first = Endpoint(tmp_path)
    create_resources(first)
    first.stop()

    from moto.core.base_backend import BackendDict

    BackendDict.reset()
    second = Endpoint(tmp_path, fresh=True)
    try:
        assert second.app.restored is not None and second.app.restored.empty
        assert second.client("s3").list_buckets()["Buckets"] == []
    finally:
        second.stop()


class BrokenBus:
    """An event bus that is down: the write is acknowledged, its event never sent."""

    def put_events(self, entries: Any) -> None:
        raise ConnectionError("the bus is down")


def test_an_acknowledged_upload_whose_event_was_lost_is_announced_after_the_restart(
    tmp_path: Path,
) -> None:
    # GIVEN a rule sending the bucket's Object Created events to a queue
    first = Endpoint(tmp_path, events=BrokenBus())
    queue = create_resources(first)
    arn = first.client("sqs").get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
    events = first.client("events")
    events.put_rule(
        Name="uploads",
        EventPattern=json.dumps({"source": ["aws.s3"], "detail-type": ["Object Created"]}),
    )
    events.put_targets(Rule="uploads", Targets=[{"Id": "q", "Arn": arn["Attributes"]["QueueArn"]}])
    first.app.checkpoint()
    # ...and an upload S3 acknowledged, whose event did not make it before the crash
    version = first.client("s3").put_object(Bucket=BUCKET, Key="raw/C/x.csv", Body=b"csv")[
        "VersionId"
    ]
    first.crash()

    # WHEN the stack starts again
    second = Endpoint(tmp_path)
    try:
        # THEN the upload's event arrives, for the version the uploader was given
        messages = second.client("sqs").receive_message(QueueUrl=queue, MaxNumberOfMessages=10)
        details = [json.loads(m["Body"])["detail"] for m in messages.get("Messages", [])]
        assert [(d["object"]["key"], d["object"]["version-id"]) for d in details] == [
            ("raw/C/x.csv", version)
        ]
    finally:
        second.stop()


def test_state_from_another_moto_version_is_refused_saying_how_to_start_fresh(
    tmp_path: Path,
) -> None:
    # GIVEN a snapshot an older local stack wrote, with the moto of its day
    snapshot = {"format": 1, "moto_version": "0.0.1", "generation": 1, "moto": {}}
    (tmp_path / "snapshot.pickle").write_bytes(pickle.dumps(snapshot | {"participants": {}}))

    with pytest.raises(StateUnreadable, match=r"moto 0\.0\.1.*local up --fresh"):
        build_aws_app(state_dir=tmp_path)


def test_a_torn_last_record_is_ignored_and_the_records_before_it_are_kept(
    tmp_path: Path,
) -> None:
    store = StateStore(tmp_path, account_id=ACCOUNT, region=REGION)
    store.restore(lambda *_: [])
    store.append("test", {"n": 1})
    store.append("test", {"n": 2})
    store.close(snapshot=False)
    (journal,) = tmp_path.glob("journal-*.log")
    data = journal.read_bytes()
    journal.write_bytes(data[:-3])  # the process died in the middle of the second write

    assert list(read_journal(journal)) == [("test", {"n": 1})]


# -- jobs -------------------------------------------------------------------------------

IMAGE = "local/state-test:1"


def runs_past_the_crash(_run: ContainerRun) -> int:
    """A container still running when the stack dies (it ends after the crash)."""
    time.sleep(4)
    return 0


def finishes(_run: ContainerRun) -> int:
    return 0


def processing_request(name: str) -> dict[str, Any]:
    return {
        "ProcessingJobName": name,
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": 1,
                "InstanceType": "ml.m5.large",
                "VolumeSizeInGB": 1,
            }
        },
        "AppSpecification": {"ImageUri": IMAGE},
        "RoleArn": f"arn:aws:iam::{ACCOUNT}:role/test",
    }


def job_service(executor: Any) -> JobService:
    return JobService(events=MotoEventBus(), executors=[(IMAGE, executor)], max_workers=1)


def test_a_job_running_when_the_stack_died_runs_again_and_announces_its_end(
    tmp_path: Path,
) -> None:
    # GIVEN a rule sending job state changes to a queue, and a job in progress
    first = Endpoint(tmp_path, jobs=job_service(runs_past_the_crash))
    queue = create_resources(first)
    arn = first.client("sqs").get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
    events = first.client("events")
    events.put_rule(Name="jobs", EventPattern=json.dumps({"source": ["aws.sagemaker"]}))
    events.put_targets(Rule="jobs", Targets=[{"Id": "q", "Arn": arn["Attributes"]["QueueArn"]}])
    first.app.checkpoint()
    name = f"cm-state-{uuid.uuid4().hex[:8]}"
    first.client("sagemaker").create_processing_job(**processing_request(name))
    first.crash()

    # WHEN the stack starts again
    second = Endpoint(tmp_path, jobs=job_service(finishes))
    try:
        # THEN the job runs again, and says why
        described = second.app.jobs.wait("processing", name, timeout=60)
        assert described["ProcessingJobStatus"] == COMPLETED
        transitions = [t for j in second.app.jobs.export_state() for t in j["transitions"]]
        assert RESTARTED_MESSAGE in [t.get("StatusMessage") for t in transitions]
        # ...and its events say it started, then completed
        sqs = second.client("sqs")
        statuses: list[str] = []
        deadline = time.monotonic() + 10
        while COMPLETED not in statuses and time.monotonic() < deadline:
            answer = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            for message in answer.get("Messages", []):
                statuses.append(json.loads(message["Body"])["detail"]["ProcessingJobStatus"])
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
        assert statuses == [IN_PROGRESS, COMPLETED]
    finally:
        second.stop()


# -- DynamoDB in its own process ------------------------------------------------------------


class SplitEndpoint(Endpoint):
    """The aws endpoint forwarding DynamoDB to a DynamoDB endpoint with its own store in
    ``state/dynamodb`` (the local stack's processes, here in one)."""

    def __init__(self, state: Path) -> None:
        self.tables = build_dynamodb_app(state_dir=state / "dynamodb", adopt_from=state)
        self.tables_server = LocalAwsServer(self.tables, port=0).start()
        self.app = build_aws_app(
            event_buckets=[BUCKET], state_dir=state, dynamodb_url=self.tables_server.url
        )
        self.server = LocalAwsServer(self.app, port=0).start()

    def stop(self) -> None:
        self.server.stop()
        self.tables_server.stop()

    def crash(self) -> None:
        assert self.tables.store is not None
        self.tables.store.close(snapshot=False)
        self.tables_server.stop()
        super().crash()


def test_dynamodb_kept_by_one_directory_is_adopted_by_its_own_process(tmp_path: Path) -> None:
    # GIVEN the state of a stack that served DynamoDB in its aws process, after a crash
    first = Endpoint(tmp_path)
    create_resources(first)
    first.client("dynamodb").put_item(TableName=TABLE, Item={"pk": {"S": "CITY#A"}})
    first.client("s3").put_object(Bucket=BUCKET, Key="raw/A/x.csv", Body=b"x")
    first.crash()

    # WHEN the stack starts with DynamoDB in its own process
    second = SplitEndpoint(tmp_path)
    try:
        dynamodb = second.client("dynamodb")  # the aws endpoint: forwarded
        # THEN the table and its item are there, and everything else too
        assert second.tables.restored is not None and second.tables.restored.records == 1
        assert "Item" in dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": "CITY#A"}})
        assert second.client("s3").get_object(Bucket=BUCKET, Key="raw/A/x.csv")
        assert (tmp_path / "dynamodb" / "snapshot.pickle").exists()  # kept there at once
        # AND DynamoDB's own errors come back through the aws endpoint as they are
        with pytest.raises(dynamodb.exceptions.ConditionalCheckFailedException):
            dynamodb.put_item(
                TableName=TABLE,
                Item={"pk": {"S": "CITY#A"}},
                ConditionExpression="attribute_not_exists(pk)",
            )
        second.app.checkpoint()  # the aws process's snapshot no longer holds DynamoDB
        dynamodb.put_item(TableName=TABLE, Item={"pk": {"S": "CITY#B"}})
    finally:
        second.crash()

    # AND after another crash both items are back, from the DynamoDB process's directory
    third = SplitEndpoint(tmp_path)
    try:
        dynamodb = third.client("dynamodb")
        for city in ("A", "B"):
            assert "Item" in dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": f"CITY#{city}"}})
        saved = pickle.loads((tmp_path / "snapshot.pickle").read_bytes())
        assert "dynamodb" not in saved["moto"]
    finally:
        third.stop()
