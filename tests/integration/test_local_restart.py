"""The local stack keeps its state across ``local down`` / ``local up``, and across a
SIGKILL of its whole process group in the middle of an onboarding.

These tests start the stack as ``citymodels local up --detach`` does (a process group
of its own, in a scratch directory, on free ports) and use it only through its
outputs, boto3 and HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from citymodels.registry import FAILED, FINAL, PUBLISHED, Registry
from citymodels_devkit.api_client import ApiClient
from citymodels_devkit.datagen import generate_city
from citymodels_devkit.local.run import StackFiles

pytestmark = pytest.mark.slow


class DetachedStack:
    """``citymodels local up --detach`` in ``directory`` (its state in ``.citymodels/``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.outputs_file = directory / "outputs.json"
        self.outputs: dict[str, str] = {}

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "citymodels_devkit.cli", "local", *args],
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def up(self, *flags: str) -> dict[str, str]:
        done = self.cli(
            "up", "--detach", "--json", "--outputs-file", str(self.outputs_file),
            "--aws-port", "0", "--api-port", "0", *flags,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        self.outputs = json.loads(done.stdout)
        return self.outputs

    def down(self) -> None:
        done = self.cli("down", "--outputs-file", str(self.outputs_file))
        assert done.returncode == 0, done.stderr

    @property
    def pid(self) -> int:
        files = StackFiles.of(self.outputs_file, state=self.directory / ".citymodels")
        return int(files.pid.read_text().split("\n")[0])

    def kill(self) -> None:
        """SIGKILL the stack's whole process group (server, job workers) and wait for it."""
        pid = self.pid
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        raise AssertionError(f"process group {pid} still alive after SIGKILL")

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.outputs["AwsEndpointUrl"],
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )

    def api(self, key: str | None = None) -> ApiClient:
        return ApiClient(self.outputs["ApiUrl"], key or self.outputs["AdminApiKey"])

    def upload(self, city: str, rows: int = 200) -> tuple[str, str]:
        """Upload a generated city; return its key and the version id S3 acknowledged."""
        table, _ = generate_city(city, rows, seed=7, noise=0.05, index=0)
        key = f"raw/{city}/houses.csv"
        answer = self.client("s3").put_object(
            Bucket=self.outputs["DataBucket"], Key=key, Body=table.to_csv_bytes()
        )
        return key, str(answer["VersionId"])

    def wait_status(self, city: str, key: str, status: str, timeout: float = 60.0) -> None:
        """Wait until the upload of ``key`` is listed with ``status``."""
        deadline = time.monotonic() + timeout
        api = self.api()
        while time.monotonic() < deadline:
            answer = api.call("GET", f"cities/{city}")
            if answer.status == 200 and any(
                u.get("key") == key and u.get("status") == status
                for u in answer.body.get("uploads", [])
            ):
                return
            time.sleep(0.05)
        raise AssertionError(f"upload {key} never {status} within {timeout} s")

    def wait_upload(self, city: str, key: str, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until the upload of ``key`` reaches a final status; return it."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        api = self.api()
        while time.monotonic() < deadline:
            answer = api.call("GET", f"cities/{city}")
            if answer.status == 200:
                uploads = [u for u in answer.body.get("uploads", []) if u.get("key") == key]
                if uploads:
                    last = uploads[0]
                    if last.get("status") in FINAL:
                        return last
            time.sleep(0.2)
        raise AssertionError(f"upload {key} not final after {timeout} s: {last}")


HOUSE = {
    "YEAR_BUILT": 1995,
    "SQUARE_FEET": 2500,
    "NUM_BEDROOMS": 3,
    "NUM_BATHROOMS": 2,
    "LOT_ACRES": 0.5,
    "GARAGE_SPACES": 2,
    "FRONT_PORCH": "y",
    "DECK": "n",
}


def test_local_down_then_up_keeps_cities_models_and_keys_and_fresh_forgets_them(
    tmp_path: Path,
) -> None:
    stack = DetachedStack(tmp_path)
    stack.up()
    try:
        # GIVEN a published city and a key for it
        key, _ = stack.upload("Restart_A")
        assert stack.wait_upload("Restart_A", key)["status"] == PUBLISHED
        registry = Registry(stack.outputs["RegistryTable"], client=stack.client("dynamodb"))
        city_key, _ = registry.create_key(["Restart_*"], description="restart test")
        before = stack.api(city_key).call(
            "POST", "cities/Restart_A/predictions", {"instances": [HOUSE]}
        )
        assert before.status == 200, before.body
        admin_key = stack.outputs["AdminApiKey"]
    finally:
        stack.down()

    # WHEN the stack starts again
    stack.up()
    try:
        # THEN the city, its model, its status and both keys are there
        city = stack.api().call("GET", "cities/Restart_A").body
        assert city["current_version"] == before.body["model_version"]
        assert [u["status"] for u in city["uploads"]] == [PUBLISHED]
        assert stack.outputs["AdminApiKey"] == admin_key
        after = stack.api(city_key).call(
            "POST", "cities/Restart_A/predictions", {"instances": [HOUSE]}
        )
        assert after.status == 200, after.body
        assert after.body == before.body
    finally:
        stack.down()

    # ...and --fresh starts empty
    stack.up("--fresh")
    try:
        assert stack.api().call("GET", "cities/Restart_A").status == 404
    finally:
        stack.down()


@pytest.mark.parametrize("kill_when", ["acknowledged", "processing"])
def test_an_upload_in_flight_at_a_sigkill_is_onboarded_after_the_restart(
    tmp_path: Path, kill_when: str
) -> None:
    stack = DetachedStack(tmp_path)
    stack.up()
    # GIVEN an upload S3 acknowledged, and the whole stack killed right after, or once
    # its run is PROCESSING (the processing job created or about to be)
    try:
        key, version_id = stack.upload("Killed_B")
        if kill_when == "processing":
            stack.wait_status("Killed_B", key, "PROCESSING")
    finally:
        stack.kill()

    # WHEN the stack starts again
    stack.up()
    try:
        # THEN the upload is there as acknowledged, and its run ends: published, or
        # failed with a reason; never lost, never stuck
        stored = stack.client("s3").get_object(
            Bucket=stack.outputs["DataBucket"], Key=key, VersionId=version_id
        )
        assert stored["VersionId"] == version_id
        upload = stack.wait_upload("Killed_B", key)
        assert upload["status"] in (PUBLISHED, FAILED), upload
        if upload["status"] == FAILED:
            assert upload["reason"]
    finally:
        stack.down()
