"""The local stack's AWS endpoint: one port, moto behind it, S3 events and SageMaker
jobs as AWS has them, invocations handed to endpoint objects.

One server (uvicorn on 127.0.0.1, an ephemeral port) serves the whole module; every
test talks to it with boto3 as the application does, only ``endpoint_url`` set.
Events are observed as the application receives them: an EventBridge rule with an
SQS target, created through the same endpoint.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import boto3
import httpx
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from citymodels_devkit.local.aws import LocalAwsServer, build_aws_app
from citymodels_devkit.local.s3events import S3Write, classify_s3_write
from citymodels_devkit.paths import LAYER_DIR, PREPROCESSING_DIR
from tests.conftest import raw_rows, upload

REGION = "us-east-1"
ACCOUNT = "123456789012"
BUCKET = "cmlocal-data"
QUIET_BUCKET = "cmlocal-quiet"
ENDPOINT = "cmlocal-endpoint"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/cmlocal-SageMakerExecutionRole"
SKLEARN_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
LINEAR_LEARNER_IMAGE = "382416733822.dkr.ecr.us-east-1.amazonaws.com/linear-learner:1"
CODE_PREFIX = "artifacts/processing/"
CITY = "NewYork_NY"
RUN = "20261125T004255123Z-0062E99A88DC40746000000000000000"
SEQUENCER = re.compile(r"[0-9A-F]{18}")
EVENT_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
JOB_TIMEOUT = 30


@dataclass
class FakeEndpoint:
    """An endpoint object: answers from memory, remembers what it was asked."""

    calls: list[tuple[str, bytes, str, str]]

    def invoke(
        self, target_model: str, body: bytes, content_type: str, accept: str
    ) -> tuple[int, dict[str, str], bytes]:
        self.calls.append((target_model, body, content_type, accept))
        answer = json.dumps({"predictions": [{"score": 1.5}], "model": target_model})
        return 200, {"Content-Type": "application/json"}, answer.encode()

    def invoke_nowait(
        self, target_model: str, body: bytes, content_type: str, accept: str
    ) -> tuple[int, dict[str, str], bytes]:
        return self.invoke(target_model, body, content_type, accept)


@dataclass(frozen=True)
class RenderedAnswer:
    """An answer that renders itself, as the local MME's ``InvokeResult`` does."""

    status: int
    code: str

    def render(self) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        body = json.dumps({"Message": f"{self.code} from the model"}).encode()
        return self.status, [(b"x-amzn-errortype", self.code.encode())], body


class BlockingEndpoint:
    """An endpoint with only ``invoke`` (it might block): served from a thread."""

    def invoke(self, target_model: str, body: bytes, content_type: str, accept: str) -> Any:
        if target_model == "broken/v1.tar.gz":
            return RenderedAnswer(424, "ModelError")
        return 200, [("Content-Type", "text/csv")], b"42.0\n"


@dataclass
class Stack:
    url: str
    server: LocalAwsServer
    endpoint: FakeEndpoint

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"max_attempts": 1}),
        )


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    endpoint = FakeEndpoint(calls=[])
    app = build_aws_app(
        endpoints={ENDPOINT: endpoint, "cmlocal-blocking": BlockingEndpoint()},
        event_buckets=[BUCKET],
        max_job_workers=2,
    )
    server = LocalAwsServer(app, port=0).start()
    stack = Stack(server.url, server, endpoint)
    s3 = stack.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.create_bucket(Bucket=QUIET_BUCKET)
    try:
        yield stack
    finally:
        server.stop()


def event_queue(stack: Stack, pattern: dict[str, Any]) -> str:
    """A queue receiving the events that match ``pattern`` (a rule with an SQS target)."""
    name = f"q-{uuid.uuid4().hex[:12]}"
    sqs, events = stack.client("sqs"), stack.client("events")
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    events.put_rule(Name=f"r-{name}", EventPattern=json.dumps(pattern))
    events.put_targets(Rule=f"r-{name}", Targets=[{"Id": "queue", "Arn": arn}])
    return str(url)


def receive(stack: Stack, queue: str, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Receive events until ``count`` arrived, then wait briefly to catch any extra one."""
    sqs = stack.client("sqs")
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wait = 1 if len(events) < count else 0
        answer = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=wait)
        messages = answer.get("Messages", [])
        for message in messages:
            events.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
        if len(events) >= count and not messages:
            break
    return events


def s3_event_pattern(bucket: str, prefix: str) -> dict[str, Any]:
    return {
        "source": ["aws.s3"],
        "detail-type": ["Object Created"],
        "detail": {"bucket": {"name": [bucket]}, "object": {"key": [{"prefix": prefix}]}},
    }


def job_event_pattern(kind: str, name: str) -> dict[str, Any]:
    prefix = "Processing" if kind == "processing" else "Training"
    return {
        "source": ["aws.sagemaker"],
        "detail-type": [f"SageMaker {prefix} Job State Change"],
        "detail": {
            f"{prefix}JobName": [name],
            f"{prefix}JobStatus": ["Completed", "Failed", "Stopped"],
        },
    }


# -- moto behind the front app ----------------------------------------------------------


def test_moto_serves_every_other_api_through_the_same_port(stack: Stack) -> None:
    s3, dynamodb, sqs, events = (stack.client(s) for s in ("s3", "dynamodb", "sqs", "events"))

    s3.put_object(Bucket=QUIET_BUCKET, Key="dir/a key+with%chars.txt", Body=b"payload")
    s3.put_object(
        Bucket=QUIET_BUCKET, Key="meta.txt", Body=b"m", Metadata={"my_key": "v", "other-key": "w"}
    )
    dynamodb.create_table(
        TableName="cmlocal-things",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.put_item(TableName="cmlocal-things", Item={"pk": {"S": "a"}, "n": {"N": "1"}})
    queue = sqs.create_queue(QueueName="cmlocal-plain")["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody="hello")
    events.put_rule(Name="cmlocal-rule", EventPattern=json.dumps({"source": ["x"]}))

    body = s3.get_object(Bucket=QUIET_BUCKET, Key="dir/a key+with%chars.txt")["Body"].read()
    assert body == b"payload"
    listed = s3.list_objects_v2(Bucket=QUIET_BUCKET, Prefix="dir/")["Contents"]
    assert [o["Key"] for o in listed] == ["dir/a key+with%chars.txt"]
    # x-amz-meta-* names keep their underscores, as through moto's own server
    assert s3.head_object(Bucket=QUIET_BUCKET, Key="meta.txt")["Metadata"] == {
        "my_key": "v",
        "other-key": "w",
    }
    item = dynamodb.get_item(TableName="cmlocal-things", Key={"pk": {"S": "a"}})["Item"]
    assert item["n"] == {"N": "1"}
    assert sqs.receive_message(QueueUrl=queue)["Messages"][0]["Body"] == "hello"
    assert events.describe_rule(Name="cmlocal-rule")["EventPattern"]


def test_sagemaker_operations_other_than_jobs_go_to_moto(stack: Stack) -> None:
    sagemaker = stack.client("sagemaker")

    sagemaker.create_model(
        ModelName="cmlocal-model",
        ExecutionRoleArn=ROLE,
        PrimaryContainer={"Image": LINEAR_LEARNER_IMAGE, "Mode": "MultiModel"},
    )

    assert sagemaker.describe_model(ModelName="cmlocal-model")["ModelName"] == "cmlocal-model"


# -- S3 events ---------------------------------------------------------------------------


def test_put_object_emits_one_aws_shaped_event_per_write(stack: Stack) -> None:
    queue = event_queue(stack, s3_event_pattern(BUCKET, "raw/put/"))
    s3 = stack.client("s3")
    key = "raw/put/New York+NY/houses 1.csv"

    first = s3.put_object(Bucket=BUCKET, Key=key, Body=b"a,b\n")
    second = s3.put_object(Bucket=BUCKET, Key=key, Body=b"a,b\nc,d\n")
    s3.put_object(Bucket=BUCKET, Key="other/x.csv", Body=b"not matched by the rule")
    s3.put_object(Bucket=QUIET_BUCKET, Key="raw/put/x.csv", Body=b"no events for this bucket")

    events = receive(stack, queue, 2)
    assert len(events) == 2
    event = events[0]
    assert {k: event[k] for k in ("version", "detail-type", "source", "account", "region")} == {
        "version": "0",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": ACCOUNT,
        "region": REGION,
    }
    assert EVENT_TIME.fullmatch(event["time"])
    assert event["resources"] == [f"arn:aws:s3:::{BUCKET}"]
    detail = event["detail"]
    assert detail["bucket"] == {"name": BUCKET}
    assert detail["reason"] == "PutObject"
    assert detail["requester"] == ACCOUNT
    assert detail["source-ip-address"] == "127.0.0.1"
    assert detail["request-id"]
    objects = sorted((e["detail"]["object"] for e in events), key=lambda o: o["sequencer"])
    # URL-encoded as S3 does in event notifications; decoding gives the key back
    assert [o["key"] for o in objects] == ["raw/put/New+York%2BNY/houses+1.csv"] * 2
    assert {unquote_plus(o["key"]) for o in objects} == {key}
    assert [o["size"] for o in objects] == [4, 8]
    assert [o["etag"] for o in objects] == [first["ETag"].strip('"'), second["ETag"].strip('"')]
    assert all(SEQUENCER.fullmatch(o["sequencer"]) for o in objects)
    assert objects[0]["sequencer"] < objects[1]["sequencer"]
    assert all("version-id" not in o for o in objects)  # the bucket is not versioned


def test_versioned_bucket_events_carry_the_version_id(stack: Stack) -> None:
    s3 = stack.client("s3")
    bucket = "cmlocal-versioned"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    stack.server.app.s3_events.enable(bucket)  # type: ignore[attr-defined]
    queue = event_queue(stack, s3_event_pattern(bucket, "raw/"))

    written = s3.put_object(Bucket=bucket, Key="raw/v.csv", Body=b"x")

    (event,) = receive(stack, queue, 1)
    assert event["detail"]["object"]["version-id"] == written["VersionId"]


def test_copy_object_event_has_reason_copy_object(stack: Stack) -> None:
    s3 = stack.client("s3")
    s3.put_object(Bucket=QUIET_BUCKET, Key="source.csv", Body=b"copied bytes")
    queue = event_queue(stack, s3_event_pattern(BUCKET, "raw/copy/"))

    copied = s3.copy_object(
        Bucket=BUCKET,
        Key="raw/copy/c.csv",
        CopySource={"Bucket": QUIET_BUCKET, "Key": "source.csv"},
    )

    (event,) = receive(stack, queue, 1)
    detail = event["detail"]
    assert detail["reason"] == "CopyObject"
    assert detail["object"]["size"] == len(b"copied bytes")
    assert detail["object"]["etag"] == copied["CopyObjectResult"]["ETag"].strip('"')


def test_multipart_upload_emits_one_complete_multipart_upload_event(
    stack: Stack, tmp_path: Path
) -> None:
    s3 = stack.client("s3")
    big = tmp_path / "big.csv"
    big.write_bytes(b"0123456789abcdef" * (9 * 1024 * 1024 // 16))  # 9 MiB: two parts
    queue = event_queue(stack, s3_event_pattern(BUCKET, "raw/multipart/"))
    config = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024**2)

    s3.upload_file(str(big), BUCKET, "raw/multipart/big.csv", Config=config)

    events = receive(stack, queue, 1)
    assert len(events) == 1
    detail = events[0]["detail"]
    assert detail["reason"] == "CompleteMultipartUpload"
    assert detail["object"]["size"] == big.stat().st_size
    assert detail["object"]["etag"].endswith("-2")  # S3's multipart ETag: md5-of-md5s-PARTS


def test_a_form_upload_emits_a_post_object_event_with_the_form_key(stack: Stack) -> None:
    queue = event_queue(stack, s3_event_pattern(BUCKET, "raw/form/"))
    post = stack.client("s3").generate_presigned_post(BUCKET, "raw/form/${filename}")

    answer = httpx.post(
        post["url"], data=post["fields"], files={"file": ("upload.csv", b"1,2,3\n")}
    )

    assert answer.status_code == 204
    (event,) = receive(stack, queue, 1)
    assert event["detail"]["reason"] == "POST Object"
    assert event["detail"]["object"]["key"] == "raw/form/upload.csv"
    assert event["detail"]["object"]["size"] == 6


def test_virtual_hosted_style_writes_emit_events_too(stack: Stack) -> None:
    queue = event_queue(stack, s3_event_pattern(BUCKET, "raw/vhost/"))

    answer = httpx.put(
        f"{stack.url}/raw/vhost/a%20b.csv",
        content=b"abc",
        headers={"Host": f"{BUCKET}.localhost:{stack.server.port}"},
    )

    assert answer.status_code == 200
    (event,) = receive(stack, queue, 1)
    assert unquote_plus(event["detail"]["object"]["key"]) == "raw/vhost/a b.csv"
    assert event["detail"]["bucket"] == {"name": BUCKET}


SIGNED_S3 = (
    "AWS4-HMAC-SHA256 Credential=AKID/20261125/us-east-1/s3/aws4_request, SignedHeaders=host"
)
SIGNED_SQS = SIGNED_S3.replace("/s3/", "/sqs/")


@pytest.mark.parametrize(
    ("method", "path", "query", "headers", "expected"),
    [
        ("PUT", "/b/k 1.csv", "", {}, S3Write("PutObject", "b", "k 1.csv")),
        ("PUT", "/b/k.csv", "x-id=PutObject", {}, S3Write("PutObject", "b", "k.csv")),
        ("PUT", "/b/k", "", {"x-amz-copy-source": "o/s"}, S3Write("CopyObject", "b", "k")),
        ("POST", "/b/k", "uploadId=u1", {}, S3Write("CompleteMultipartUpload", "b", "k")),
        (
            "POST",
            "/b",
            "",
            {"content-type": "multipart/form-data; boundary=x"},
            S3Write("POST Object", "b", ""),
        ),
        ("PUT", "/k.csv", "", {"host": "b.localhost:4566"}, S3Write("PutObject", "b", "k.csv")),
        ("PUT", "/b/k", "partNumber=1&uploadId=u1", {}, None),  # UploadPart
        ("POST", "/b/k", "uploads=", {}, None),  # CreateMultipartUpload
        ("PUT", "/b/k", "tagging=", {}, None),  # PutObjectTagging
        ("POST", "/b", "delete=", {"content-type": "application/xml"}, None),  # DeleteObjects
        ("PUT", "/b", "", {}, None),  # CreateBucket
        ("GET", "/b/k", "", {}, None),
        ("POST", "/", "", {"authorization": SIGNED_SQS}, None),  # another service
        ("PUT", "/b/k", "", {"authorization": SIGNED_S3}, S3Write("PutObject", "b", "k")),
    ],
)
def test_which_s3_requests_create_objects(
    method: str, path: str, query: str, headers: dict[str, str], expected: S3Write | None
) -> None:
    headers = {"host": "127.0.0.1:4566", **headers}

    assert classify_s3_write(method, path, query, headers) == expected


# -- SageMaker Runtime: invocations ------------------------------------------------------


def test_invocations_reach_the_registered_endpoint_object(stack: Stack) -> None:
    runtime = stack.client("sagemaker-runtime")

    answer = runtime.invoke_endpoint(
        EndpointName=ENDPOINT,
        TargetModel="NewYork_NY/v1.tar.gz",
        ContentType="text/csv",
        Accept="application/json",
        Body=b"2005,3000,3,2,1,2,y,n",
    )

    assert json.loads(answer["Body"].read())["model"] == "NewYork_NY/v1.tar.gz"
    assert answer["ContentType"] == "application/json"
    assert stack.endpoint.calls[-1] == (
        "NewYork_NY/v1.tar.gz",
        b"2005,3000,3,2,1,2,y,n",
        "text/csv",
        "application/json",
    )


def test_endpoints_that_may_block_are_served_and_their_errors_reach_the_client(
    stack: Stack,
) -> None:
    runtime = stack.client("sagemaker-runtime")

    answer = runtime.invoke_endpoint(
        EndpointName="cmlocal-blocking", TargetModel="a/v1.tar.gz", Body=b"1"
    )
    with pytest.raises(ClientError) as raised:
        runtime.invoke_endpoint(
            EndpointName="cmlocal-blocking", TargetModel="broken/v1.tar.gz", Body=b"1"
        )

    assert answer["Body"].read() == b"42.0\n"
    assert answer["ContentType"] == "text/csv"
    assert raised.value.response["Error"]["Code"] == "ModelError"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 424


def test_an_unknown_endpoint_is_a_validation_error(stack: Stack) -> None:
    runtime = stack.client("sagemaker-runtime")

    with pytest.raises(ClientError) as raised:
        runtime.invoke_endpoint(EndpointName="no-such-endpoint", Body=b"1")

    error = raised.value.response["Error"]
    assert error["Code"] == "ValidationError"
    assert error["Message"] == f"Endpoint no-such-endpoint of account {ACCOUNT} not found."
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


# -- SageMaker jobs ----------------------------------------------------------------------


def upload_processing_code(stack: Stack) -> None:
    """Ship preprocess.py with the citymodels package, as the deployment does."""
    s3 = stack.client("s3")
    s3.upload_file(str(PREPROCESSING_DIR / "preprocess.py"), BUCKET, CODE_PREFIX + "preprocess.py")
    package = LAYER_DIR / "citymodels"
    for path in sorted(package.rglob("*.py")):
        key = f"{CODE_PREFIX}citymodels/{path.relative_to(package).as_posix()}"
        s3.upload_file(str(path), BUCKET, key)


def processing_request(name: str, raw_key: str, run: str = RUN) -> dict[str, Any]:
    """A CreateProcessingJob request shaped as the onboard function's."""
    outputs = ("train", "validation", "test", "test-raw")
    return {
        "ProcessingJobName": name,
        "RoleArn": ROLE,
        "AppSpecification": {
            "ImageUri": SKLEARN_IMAGE,
            "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/preprocess.py"],
        },
        "ProcessingInputs": [
            {
                "InputName": "raw",
                "S3Input": {
                    "S3Uri": f"s3://{BUCKET}/{raw_key}",
                    "LocalPath": "/opt/ml/processing/input/raw",
                    "S3DataType": "S3Prefix",
                    "S3InputMode": "File",
                },
            },
            {
                "InputName": "code",
                "S3Input": {
                    "S3Uri": f"s3://{BUCKET}/{CODE_PREFIX}",
                    "LocalPath": "/opt/ml/processing/input/code",
                    "S3DataType": "S3Prefix",
                    "S3InputMode": "File",
                },
            },
        ],
        "ProcessingOutputConfig": {
            "Outputs": [
                {
                    "OutputName": split,
                    "S3Output": {
                        "S3Uri": f"s3://{BUCKET}/processed/{CITY}/{run}/{split}/",
                        "LocalPath": f"/opt/ml/processing/output/{split}",
                        "S3UploadMode": "EndOfJob",
                    },
                }
                for split in outputs
            ]
        },
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": 1,
                "InstanceType": "ml.m5.large",
                "VolumeSizeInGB": 30,
            }
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "Environment": {"CITYMODELS_CITY": CITY, "CITYMODELS_RUN": run},
        "Tags": [{"Key": "city", "Value": CITY}, {"Key": "run", "Value": run}],
    }


def training_request(name: str, run: str = RUN) -> dict[str, Any]:
    """A CreateTrainingJob request shaped as the train function's."""
    return {
        "TrainingJobName": name,
        "RoleArn": ROLE,
        "AlgorithmSpecification": {
            "TrainingImage": LINEAR_LEARNER_IMAGE,
            "TrainingInputMode": "File",
        },
        "HyperParameters": {
            "feature_dim": "10",
            "predictor_type": "regressor",
            "mini_batch_size": "100",
            "epochs": "5",
            "num_models": "8",
            "loss": "absolute_loss",
        },
        "InputDataConfig": [
            {
                "ChannelName": channel,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": f"s3://{BUCKET}/processed/{CITY}/{run}/{channel}/",
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
                "ContentType": "text/csv;label_size=1",
                "CompressionType": "None",
            }
            for channel in ("train", "validation", "test")
        ],
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/training/{CITY}/{run}/"},
        "ResourceConfig": {
            "InstanceType": "ml.m5.large",
            "InstanceCount": 1,
            "VolumeSizeInGB": 30,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "Tags": [{"Key": "city", "Value": CITY}, {"Key": "run", "Value": RUN}],
    }


def wait_for_job_event(stack: Stack, queue: str) -> dict[str, Any]:
    events = receive(stack, queue, 1, timeout=JOB_TIMEOUT)
    assert len(events) == 1, events
    return events[0]


@dataclass
class ProcessedRun:
    name: str
    event: dict[str, Any]
    statuses: list[str]
    seconds: float


@pytest.fixture(scope="module")
def processed_run(stack: Stack) -> ProcessedRun:
    """A 1,000-row city processed by the real preprocessing code in a processing job."""
    upload_processing_code(stack)
    raw_key = f"raw/{CITY}/houses.csv"
    stack.client("s3").put_object(Bucket=BUCKET, Key=raw_key, Body=upload(raw_rows(1000)))
    name = "cm-cmlocal-processing-1"
    every_status = job_event_pattern("processing", name)
    del every_status["detail"]["ProcessingJobStatus"]
    queue = event_queue(stack, every_status)
    started = time.monotonic()

    stack.client("sagemaker").create_processing_job(**processing_request(name, raw_key))

    events = receive(stack, queue, 2, timeout=JOB_TIMEOUT)
    statuses = [e["detail"]["ProcessingJobStatus"] for e in events]
    return ProcessedRun(name, events[-1], statuses, time.monotonic() - started)


def test_processing_job_runs_the_shipped_code_and_reports_completed(
    stack: Stack, processed_run: ProcessedRun
) -> None:
    sagemaker, s3 = stack.client("sagemaker"), stack.client("s3")

    event = processed_run.event
    described = sagemaker.describe_processing_job(ProcessingJobName=processed_run.name)

    assert event["detail-type"] == "SageMaker Processing Job State Change"
    assert event["source"] == "aws.sagemaker"
    assert event["resources"] == [described["ProcessingJobArn"]]
    detail = event["detail"]
    assert detail["ProcessingJobStatus"] == "Completed", described.get("FailureReason")
    assert processed_run.statuses == ["InProgress", "Completed"]  # as SageMaker emits them
    assert detail["ProcessingJobName"] == processed_run.name
    assert detail["Environment"] == {"CITYMODELS_CITY": CITY, "CITYMODELS_RUN": RUN}
    for key in ("CreationTime", "ProcessingStartTime", "ProcessingEndTime", "LastModifiedTime"):
        assert isinstance(detail[key], int) and detail[key] > 1_700_000_000_000  # epoch ms
    assert described["ProcessingJobStatus"] == "Completed"
    assert described["ProcessingEndTime"] >= described["ProcessingStartTime"]
    keys = {
        o["Key"]
        for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"processed/{CITY}/{RUN}/")["Contents"]
    }
    assert keys == {
        f"processed/{CITY}/{RUN}/{split}/{split}.csv"
        for split in ("train", "validation", "test", "test-raw")
    }
    train = s3.get_object(Bucket=BUCKET, Key=f"processed/{CITY}/{RUN}/train/train.csv")
    rows = train["Body"].read().decode().splitlines()
    assert 550 < len(rows) < 700  # 1,000 rows: 10% test, then 30% of the rest validation
    assert len(rows[0].split(",")) == 11  # the label, then ten one-hot features
    tags = sagemaker.list_tags(ResourceArn=described["ProcessingJobArn"])["Tags"]
    assert {"Key": "city", "Value": CITY} in tags


def test_processing_job_on_a_bad_csv_fails_with_the_line_in_exit_message(stack: Stack) -> None:
    rows = raw_rows(60)
    rows[10] = "1990,abc,3,2,0.5,1,y,n,100000"
    raw_key = f"raw/{CITY}/bad.csv"
    stack.client("s3").put_object(Bucket=BUCKET, Key=raw_key, Body=upload(rows))
    upload_processing_code(stack)
    name = "cm-cmlocal-processing-bad-1"
    queue = event_queue(stack, job_event_pattern("processing", name))
    run = "20261125T010000000Z-0062E99A88DC40746100000000000000"
    sagemaker = stack.client("sagemaker")

    sagemaker.create_processing_job(**processing_request(name, raw_key, run))

    event = wait_for_job_event(stack, queue)
    described = sagemaker.describe_processing_job(ProcessingJobName=name)
    assert event["detail"]["ProcessingJobStatus"] == "Failed"
    assert described["ProcessingJobStatus"] == "Failed"
    assert described["FailureReason"] == "AlgorithmError: See job logs for more information"
    assert "line 11" in described["ExitMessage"]
    assert "SQUARE_FEET" in described["ExitMessage"]
    assert event["detail"]["ExitMessage"] == described["ExitMessage"]


def test_a_code_bundle_without_the_citymodels_package_fails_as_in_the_container(
    stack: Stack,
) -> None:
    s3 = stack.client("s3")
    s3.upload_file(str(PREPROCESSING_DIR / "preprocess.py"), BUCKET, "artifacts/bare/preprocess.py")
    name = "cm-cmlocal-bare-bundle-1"
    request = processing_request(name, f"raw/{CITY}/houses.csv")
    request["ProcessingInputs"][1]["S3Input"]["S3Uri"] = f"s3://{BUCKET}/artifacts/bare/"

    stack.client("sagemaker").create_processing_job(**request)

    jobs = stack.server.app.jobs  # type: ignore[attr-defined]
    described = jobs.wait("processing", name, JOB_TIMEOUT)
    assert described["ProcessingJobStatus"] == "Failed"
    # the devkit has citymodels installed; the scikit-learn container has only the bundle
    assert "No module named 'citymodels'" in jobs.log("processing", name)


def test_training_job_trains_the_processed_run_and_reports_artifacts_and_metrics(
    stack: Stack, processed_run: ProcessedRun
) -> None:
    assert processed_run.event["detail"]["ProcessingJobStatus"] == "Completed"
    name = "cm-cmlocal-training-1"
    queue = event_queue(stack, job_event_pattern("training", name))
    sagemaker, s3 = stack.client("sagemaker"), stack.client("s3")

    sagemaker.create_training_job(**training_request(name))

    event = wait_for_job_event(stack, queue)
    described = sagemaker.describe_training_job(TrainingJobName=name)
    detail = event["detail"]
    assert detail["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    assert detail["Tags"] == {"city": CITY, "run": RUN}
    assert isinstance(detail["TrainingEndTime"], str) and detail["TrainingEndTime"].isdigit()
    artifact = described["ModelArtifacts"]["S3ModelArtifacts"]
    key = f"training/{CITY}/{RUN}/{name}/output/model.tar.gz"
    assert artifact == f"s3://{BUCKET}/{key}"
    model = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(model), mode="r:gz") as tar:
        assert tar.getnames() == ["linear-learner.json"]
    metrics = {m["MetricName"]: m["Value"] for m in described["FinalMetricDataList"]}
    assert {"validation:absolute_loss", "test:absolute_loss"} <= set(metrics)
    assert metrics["test:absolute_loss"] > 0
    assert described["SecondaryStatus"] == "Completed"
    assert [t["Status"] for t in described["SecondaryStatusTransitions"]] == [
        "Starting",
        "Downloading",
        "Training",
        "Uploading",
        "Completed",
    ]
    summaries = sagemaker.list_training_jobs(NameContains="cmlocal-training")
    assert [s["TrainingJobName"] for s in summaries["TrainingJobSummaries"]] == [name]


def test_training_job_on_a_missing_channel_fails_with_a_client_error(stack: Stack) -> None:
    name = "cm-cmlocal-training-empty-1"
    run = "20261125T020000000Z-0062E99A88DC40746200000000000000"
    sagemaker = stack.client("sagemaker")

    sagemaker.create_training_job(**training_request(name, run))

    described = stack.server.app.jobs.wait("training", name, JOB_TIMEOUT)  # type: ignore[attr-defined]
    assert described["TrainingJobStatus"] == "Failed"
    assert described["FailureReason"].startswith("ClientError: No S3 objects found under S3 URL")


def test_a_job_with_an_image_the_stack_cannot_run_fails_saying_so(stack: Stack) -> None:
    request = processing_request("cm-cmlocal-unknown-image-1", "raw/none.csv")
    request["AppSpecification"]["ImageUri"] = "123.dkr.ecr.us-east-1.amazonaws.com/xgboost:1"

    stack.client("sagemaker").create_processing_job(**request)

    described = stack.server.app.jobs.wait(  # type: ignore[attr-defined]
        "processing", "cm-cmlocal-unknown-image-1", JOB_TIMEOUT
    )
    assert described["ProcessingJobStatus"] == "Failed"
    assert "xgboost:1" in described["FailureReason"]


def test_stopping_a_running_job_ends_it_stopped_without_outputs(stack: Stack) -> None:
    s3 = stack.client("s3")
    s3.put_object(
        Bucket=BUCKET,
        Key="artifacts/slow/slow.py",
        Body=b"import pathlib, time\ntime.sleep(1.5)\n"
        b"pathlib.Path('processing/output/o').mkdir(parents=True)\n"
        b"pathlib.Path('processing/output/o/x.txt').write_text('x')\n",
    )
    name = "cm-cmlocal-slow-1"
    request = processing_request(name, "artifacts/slow/slow.py")
    request["AppSpecification"]["ContainerEntrypoint"] = [
        "python3",
        "/opt/ml/processing/input/raw/slow.py",
    ]
    request["ProcessingInputs"] = request["ProcessingInputs"][:1]
    request["ProcessingOutputConfig"] = {
        "Outputs": [
            {
                "OutputName": "o",
                "S3Output": {
                    "S3Uri": f"s3://{BUCKET}/slow-output/",
                    "LocalPath": "/opt/ml/processing/output/o",
                    "S3UploadMode": "EndOfJob",
                },
            }
        ]
    }
    queue = event_queue(stack, job_event_pattern("processing", name))
    sagemaker = stack.client("sagemaker")
    sagemaker.create_processing_job(**request)

    sagemaker.stop_processing_job(ProcessingJobName=name)

    assert sagemaker.describe_processing_job(ProcessingJobName=name)["ProcessingJobStatus"] in (
        "Stopping",
        "Stopped",
    )
    event = wait_for_job_event(stack, queue)
    assert event["detail"]["ProcessingJobStatus"] == "Stopped"
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="slow-output/")


def test_a_duplicate_job_name_is_resource_in_use(stack: Stack) -> None:
    sagemaker = stack.client("sagemaker")
    request = processing_request("cm-cmlocal-duplicate-1", "raw/none.csv")
    sagemaker.create_processing_job(**request)

    with pytest.raises(ClientError) as raised:
        sagemaker.create_processing_job(**request)

    assert raised.value.response["Error"]["Code"] == "ResourceInUse"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_past_the_configured_capacity_create_is_resource_limit_exceeded(stack: Stack) -> None:
    jobs = stack.server.app.jobs  # type: ignore[attr-defined]
    jobs.max_active_jobs = 0
    try:
        with pytest.raises(ClientError) as raised:
            stack.client("sagemaker").create_training_job(
                **training_request("cm-cmlocal-capacity-1")
            )
    finally:
        jobs.max_active_jobs = None

    assert raised.value.response["Error"]["Code"] == "ResourceLimitExceeded"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ProcessingJobName": "cm_underscore"}, "regular expression pattern"),
        ({"ProcessingJobName": "x" * 64}, "length less than or equal to 63"),
        ({"RoleArn": None}, "Value null at 'roleArn'"),
    ],
)
def test_invalid_create_requests_are_validation_exceptions(
    stack: Stack, change: dict[str, Any], message: str
) -> None:
    request = processing_request("cm-cmlocal-invalid-1", "raw/none.csv")
    request.update(change)
    request = {k: v for k, v in request.items() if v is not None}
    # boto3 validates what it can before sending: switched off, the server must answer.
    client = boto3.client(
        "sagemaker",
        endpoint_url=stack.url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(parameter_validation=False),
    )

    with pytest.raises(ClientError) as raised:
        client.create_processing_job(**request)

    error = raised.value.response["Error"]
    assert error["Code"] == "ValidationException"
    assert message in error["Message"]


def test_describing_an_unknown_job_is_a_validation_exception(stack: Stack) -> None:
    with pytest.raises(ClientError) as raised:
        stack.client("sagemaker").describe_training_job(TrainingJobName="cm-cmlocal-nothing")

    error = raised.value.response["Error"]
    assert error["Code"] == "ValidationException"
    assert error["Message"].startswith("Could not find training job")


def test_a_job_that_kills_its_worker_fails_and_the_next_job_still_runs(stack: Stack) -> None:
    s3, sagemaker = stack.client("s3"), stack.client("sagemaker")
    jobs = stack.server.app.jobs  # type: ignore[attr-defined]
    s3.put_object(
        Bucket=BUCKET,
        Key="artifacts/crash/crash.py",
        Body=b"import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
    )
    s3.put_object(
        Bucket=BUCKET,
        Key="artifacts/fine/fine.py",
        Body=b"import pathlib\npathlib.Path('processing/output/o').mkdir(parents=True)\n"
        b"pathlib.Path('processing/output/o/x.txt').write_text('x')\n",
    )

    def script_job(name: str, key: str) -> dict[str, Any]:
        request = processing_request(name, key)
        request["AppSpecification"]["ContainerEntrypoint"] = [
            "python3",
            f"/opt/ml/processing/input/raw/{key.rsplit('/', 1)[1]}",
        ]
        request["ProcessingInputs"] = request["ProcessingInputs"][:1]
        request["ProcessingOutputConfig"] = {
            "Outputs": [
                {
                    "OutputName": "o",
                    "S3Output": {
                        "S3Uri": f"s3://{BUCKET}/{name}-output/",
                        "LocalPath": "/opt/ml/processing/output/o",
                        "S3UploadMode": "EndOfJob",
                    },
                }
            ]
        }
        sagemaker.create_processing_job(**request)
        return dict(jobs.wait("processing", name, JOB_TIMEOUT))

    crashed = script_job("cm-cmlocal-crash-1", "artifacts/crash/crash.py")
    after = script_job("cm-cmlocal-after-crash-1", "artifacts/fine/fine.py")

    assert crashed["ProcessingJobStatus"] == "Failed"
    assert crashed["FailureReason"].startswith("InternalServerError: the local job worker failed")
    assert after["ProcessingJobStatus"] == "Completed", after.get("FailureReason")
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="cm-cmlocal-after-crash-1-output/")
    assert [o["Key"] for o in listed["Contents"]] == ["cm-cmlocal-after-crash-1-output/x.txt"]


def test_a_wsgi_app_is_served_whole_in_one_hand_off() -> None:
    from citymodels_devkit.local.aws import WsgiOnThreads

    seen: dict[str, Any] = {}

    class Answer:
        """A WSGI answer in parts, one written before them, with a close()."""

        closed = False

        def __iter__(self) -> Iterator[bytes]:
            yield b"two,"
            yield b"three"

        def close(self) -> None:
            Answer.closed = True

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        seen["body"] = environ["wsgi.input"].read()
        seen["path"], seen["query"] = environ["PATH_INFO"], environ["QUERY_STRING"]
        seen["header"] = environ["HTTP_X_AMZ_META_CITY"]
        write = start_response("409 Conflict", [("X-Kind", " parts "), ("Content-Length", "13")])
        write(b"one,")
        return Answer()

    bridge = WsgiOnThreads(app, workers=2)
    server = LocalAwsServer(bridge, port=0).start()
    try:
        answer = httpx.post(
            f"{server.url}/b/k?uploads=1",
            content=b"payload",
            headers={"x-amz-meta-city": "Springfield"},
        )
    finally:
        server.stop()
        bridge.close()
    assert (answer.status_code, answer.text) == (409, "one,two,three")
    assert answer.headers["x-kind"] == "parts"
    assert seen == {
        "body": b"payload",
        "path": "/b/k",
        "query": "uploads=1",
        "header": "Springfield",
    }
    assert Answer.closed
