"""Fixtures for unit tests (moto-backed AWS, Lambda context, events)."""

import os

import pytest

from tests.aws import aws, aws_credentials, lambda_context  # noqa: F401 - pytest fixtures


@pytest.fixture(autouse=True)
def no_running_stack_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """No per-service endpoint of a running local stack reaches a unit test.

    A stack started by an integration test of the same session exports, for its
    functions, ``AWS_ENDPOINT_URL_DYNAMODB`` and ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME``
    (its DynamoDB and endpoint processes): a boto3 client made in a unit test, even
    under ``mock_aws``, would talk to that process. The bare ``AWS_ENDPOINT_URL`` is
    each test's own to set or clear.
    """
    for name in [n for n in os.environ if n.startswith("AWS_ENDPOINT_URL_")]:
        monkeypatch.delenv(name)
