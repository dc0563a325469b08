"""The local stack, started in-process once for the integration tests.

Tests drive it only as a user would: through its outputs, boto3 (``AWS_ENDPOINT_URL``)
and HTTP — never by calling handlers or internals. The stack runs from the
repository's ``template.yaml``; a test that needs another template starts its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import boto3
import pytest

from citymodels.registry import FINAL
from citymodels_devkit.api_client import ApiClient
from citymodels_devkit.local.stack import LocalOptions, LocalStack

MME_MAX_MODELS = 8


@dataclass
class Running:
    """A running local stack, as a user sees it."""

    stack: LocalStack
    outputs: dict[str, str]

    @property
    def bucket(self) -> str:
        return self.outputs["DataBucket"]

    def client(self, service: str) -> Any:
        return boto3.client(
            service, endpoint_url=self.outputs["AwsEndpointUrl"], region_name="us-east-1"
        )

    def upload(self, city: str, data: bytes, name: str = "houses.csv", prefix: str = "raw/") -> str:
        key = f"{prefix}{city}/{name}"
        self.client("s3").put_object(Bucket=self.bucket, Key=key, Body=data)
        return key

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        """Call the HTTP API; return (status, parsed JSON body)."""
        answer = self.api_client.call(method, path, body, key=key, content_type=content_type)
        return answer.status, answer.body

    @cached_property
    def api_client(self) -> ApiClient:
        """One client (one keep-alive connection) for every call, with the admin key."""
        return ApiClient(self.outputs["ApiUrl"], self.outputs["AdminApiKey"])

    def city(self, city: str) -> dict[str, Any]:
        status, body = self.api("GET", f"cities/{city}")
        assert status == 200, body
        return dict(body)

    def wait_upload(self, city: str, key: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the upload of ``key`` reaches a final status; return it."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status, body = self.api("GET", f"cities/{city}")
            if status == 200:
                uploads = [u for u in body.get("uploads", []) if u.get("key") == key]
                if uploads:
                    last = uploads[0]
                    if last.get("status") in FINAL:
                        return last
            time.sleep(0.1)
        raise AssertionError(f"upload {key} not final after {timeout} s: {last}")


def start_stack(tmp: Path, template: Path | None = None, **options: Any) -> LocalStack:
    opts = LocalOptions(
        stack_name=options.pop("stack_name", "cm-it"),
        aws_port=0,
        api_port=0,
        work_dir=tmp,
        parameter_overrides={"LogLevel": "WARNING", **options.pop("parameter_overrides", {})},
        **options,
    )
    stack = LocalStack(template, opts)
    stack.start()
    return stack


@pytest.fixture(scope="session")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The local stack from the repository's template, with a small memory tier."""
    stack = start_stack(
        tmp_path_factory.mktemp("local-stack"), mme_max_models=MME_MAX_MODELS, load_wait_seconds=2.0
    )
    try:
        yield Running(stack, stack.outputs)
    finally:
        stack.stop()
