"""Shared AWS test fixtures: moto-backed resources built from the code's own definitions.

Import the fixtures into a test module's namespace, or use them through
``tests/unit/conftest.py`` which re-exports them. Every AWS client is created inside
``mock_aws`` after fake credentials are set, as moto's documentation prescribes, and
sockets to anything but moto are never opened.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore import xform_name
from botocore.model import OperationModel
from botocore.response import StreamingBody
from botocore.stub import Stubber
from moto import mock_aws

from citymodels.registry import Registry, table_definition

REGION = "us-east-1"
STACK = "cmtest"
BUCKET = "cmtest-data"
TABLE = "cmtest-registry"
ENDPOINT = "cmtest-endpoint"
EVENTS_DIR = Path(__file__).resolve().parents[1] / "events"


@dataclass
class Aws:
    """The mocked account: clients and the stack's resources."""

    s3: Any
    dynamodb: Any
    sqs: Any
    sagemaker: Any
    registry: Registry
    bucket: str
    table: str
    retry_queue_url: str
    failure_queue_url: str


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and region, so no test can reach a real account."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    # Every endpoint variable, the per-service ones included (a running local stack
    # sets AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME for its functions).
    for name in ["AWS_PROFILE", *(n for n in os.environ if n.startswith("AWS_ENDPOINT_URL"))]:
        monkeypatch.delenv(name, raising=False)


def create_registry_table(dynamodb: Any, name: str = TABLE) -> None:
    """Create the registry table with the key schema and the index the code defines."""
    dynamodb.create_table(TableName=name, **table_definition())


@pytest.fixture
def aws(aws_credentials: None) -> Iterator[Aws]:
    """A mocked account with the DataBucket, the registry table and the queues."""
    # Keeping boto3's default session across tests spares botocore re-reading ~60 service
    # models per test (0.7 s each); every client below is created fresh anyway.
    with mock_aws(config={"core": {"reset_boto3_session": False}}):
        s3 = boto3.client("s3", region_name=REGION)
        dynamodb = boto3.client("dynamodb", region_name=REGION)
        sqs = boto3.client("sqs", region_name=REGION)
        sagemaker = boto3.client("sagemaker", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET)
        create_registry_table(dynamodb)
        retry = sqs.create_queue(QueueName="cmtest-capacity-retry")["QueueUrl"]
        failure = sqs.create_queue(QueueName="cmtest-failures")["QueueUrl"]
        yield Aws(
            s3=s3,
            dynamodb=dynamodb,
            sqs=sqs,
            sagemaker=sagemaker,
            registry=Registry(TABLE, client=dynamodb),
            bucket=BUCKET,
            table=TABLE,
            retry_queue_url=retry,
            failure_queue_url=failure,
        )


def load_event(name: str) -> dict[str, Any]:
    """Load a real-shaped sample event from ``events/{name}.json``."""
    event: dict[str, Any] = json.loads((EVENTS_DIR / f"{name}.json").read_text())
    return event


@dataclass
class FakeLambdaContext:
    """The attributes Powertools reads from a Lambda context."""

    function_name: str = "test-function"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:123456789012:function:test-function"
    aws_request_id: str = "52fdfc07-2182-154f-163f-5f0f9a621d72"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    """A fake LambdaContext."""
    return FakeLambdaContext()


@dataclass(frozen=True)
class AwsError:
    """An AWS error answer: its code, HTTP status and message."""

    code: str
    status: int
    message: str


class StubbedClient:
    """A real boto3 client under botocore's :class:`~botocore.stub.Stubber`, answered per call.

    Stubber answers from a queue of canned answers; here each call queues its own answer,
    ``answer(operation, request)`` (the client's method name and its parameters), just
    before Stubber takes it (botocore's ``provide-client-params`` event), so an answer can
    depend on the request. Stubber checks the request and the answer against the API
    model, and an :class:`AwsError` arrives as botocore raises it: the modelled exception
    (``client.exceptions.ResourceInUse``, ``ModelError``, ...) where the model has one.
    Every call is kept in :attr:`operations`, as ``(operation, request)``.
    """

    def __init__(
        self, service: str, answer: Callable[[str, dict[str, Any]], dict[str, Any] | AwsError]
    ) -> None:
        self.client = boto3.client(
            service,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.operations: list[tuple[str, dict[str, Any]]] = []
        self._answer = answer
        self._stubber = Stubber(self.client)
        service_id = self.client.meta.service_model.service_id.hyphenize()
        self.client.meta.events.register(f"provide-client-params.{service_id}", self._queue)
        self._stubber.activate()

    def _queue(self, params: dict[str, Any], model: OperationModel, **_: Any) -> None:
        operation = xform_name(model.name)
        self.operations.append((operation, dict(params)))
        answer = self._answer(operation, params)
        if isinstance(answer, AwsError):
            self._stubber.add_client_error(
                operation,
                service_error_code=answer.code,
                service_message=answer.message,
                http_status_code=answer.status,
            )
        else:
            self._stubber.add_response(operation, answer)


class StubbedRuntime(StubbedClient):
    """A ``sagemaker-runtime`` client whose InvokeEndpoint answers ``answer(request)``:
    the answer's JSON body, or an :class:`AwsError` (``ModelError``, ...)."""

    def __init__(self, answer: Callable[[dict[str, Any]], bytes | AwsError]) -> None:
        def invoke_endpoint(operation: str, request: dict[str, Any]) -> dict[str, Any] | AwsError:
            assert operation == "invoke_endpoint", operation
            body = answer(request)
            if isinstance(body, AwsError):
                return body
            return {
                "Body": StreamingBody(io.BytesIO(body), len(body)),
                "ContentType": "application/json",
            }

        super().__init__("sagemaker-runtime", invoke_endpoint)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The InvokeEndpoint requests, in order."""
        return [request for _, request in self.operations]
