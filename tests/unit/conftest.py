"""Fixtures for unit tests (moto-backed AWS, Lambda context, events)."""

from tests.aws import aws, aws_credentials, lambda_context  # noqa: F401 - pytest fixtures
