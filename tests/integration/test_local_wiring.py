"""Behaviour that needs a stack of its own: the wiring follows an edited template; a
training job that fails; a request waiting on a slow model load."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from citymodels_devkit.cli import main as cli_main
from citymodels_devkit.paths import REPO_ROOT
from tests.conftest import raw_rows, upload
from tests.integration.conftest import Running, start_stack

HOUSE = {
    "YEAR_BUILT": 1995, "SQUARE_FEET": 2500, "NUM_BEDROOMS": 3, "NUM_BATHROOMS": 2.5,
    "LOT_ACRES": 1.0, "GARAGE_SPACES": 2, "FRONT_PORCH": "y", "DECK": "n",
}  # fmt: skip


def edited_template(tmp: Path) -> Path:
    """A copy of template.yaml whose uploads land under incoming/ and whose OpenAPI
    route moved, next to links to the code it deploys."""
    text = (REPO_ROOT / "template.yaml").read_text()
    text, raw_edits = re.subn(
        r"(RawPrefix:\n(?:\s+.*\n)*?\s+Default:\s*)raw/", r"\1incoming/", text
    )
    text, route_edits = re.subn(r"Path: /openapi\.json", "Path: /docs/openapi.json", text)
    text, response_edits = re.subn(
        r'"message": "missing or unknown API key',
        '"message": "edited: missing or unknown key',
        text,
    )
    assert response_edits == 1, "the template's UNAUTHORIZED gateway response was not found"
    assert raw_edits == 1, "the template's RawPrefix default was not found"
    assert route_edits == 1, "the template's OpenAPI route was not found"
    for name in ("functions", "layers", "preprocessing"):
        (tmp / name).symlink_to(REPO_ROOT / name)
    path = tmp / "template.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def edited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A stack from the edited template, whose Linear Learner loss is one it rejects
    (so training fails), and whose model loads are slow."""
    root = tmp_path_factory.mktemp("edited")
    stack = start_stack(
        root / "work",
        template=edited_template(root),
        stack_name="cm-edited",
        parameter_overrides={"LinearLearnerLoss": "hinge_loss"},
        load_delay_seconds=1.5,
        load_wait_seconds=0.3,
    )
    try:
        yield Running(stack, stack.outputs)
    finally:
        stack.stop()


def test_uploads_follow_the_raw_prefix_of_the_template(edited: Running) -> None:
    ignored = edited.upload("Chicago_IL", upload(raw_rows(60)), prefix="raw/")
    followed = edited.upload("Chicago_IL", upload(raw_rows(60)), "other.csv", prefix="incoming/")
    final = edited.wait_upload("Chicago_IL", followed)
    # the rule now matches incoming/ only: the raw/ upload started nothing
    assert final["key"] == followed
    assert [u["key"] for u in edited.city("Chicago_IL")["uploads"]] == [followed]
    assert ignored.startswith("raw/")


def test_onboard_uploads_under_the_stacks_raw_prefix(
    edited: Running, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN the stack's outputs, as local up writes them, and a city's CSV
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(edited.outputs))
    (tmp_path / "houses.csv").write_bytes(upload(raw_rows(80)))
    # WHEN the user onboards it and waits
    code = cli_main(
        ["onboard", "Dallas_TX", str(tmp_path / "houses.csv"), "--outputs", str(outputs),
         "--wait", "--interval", "0.2", "--timeout", "60", "--json"]
    )  # fmt: skip
    # THEN it went under the template's RawPrefix and its run was followed to the end
    # (FAILED: this stack's Linear Learner loss is one it rejects)
    out = capsys.readouterr().out  # after the in-process functions' EMF lines
    answer = json.loads(out[out.index('{\n  "city"') :])
    assert answer["key"] == "incoming/Dallas_TX/houses.csv"
    assert (code, answer["run"]["status"]) == (1, "FAILED")


def test_a_training_job_that_fails_is_failed_with_its_reason(edited: Running) -> None:
    key = edited.upload("Houston_TX", upload(raw_rows(80)), prefix="incoming/")
    final = edited.wait_upload("Houston_TX", key)
    assert final["status"] == "FAILED"
    assert "loss" in final["reason"]
    assert "hinge_loss" in final["reason"]


def test_routes_follow_the_template(edited: Running) -> None:
    # the old path is no route any more; the new one reaches the function (whose own
    # router answers it: API Gateway's unknown-route answer is 403, not 404)
    status, body = edited.api("GET", "openapi.json", key="")
    assert (status, body) == (403, {"message": "Missing Authentication Token"})
    status, body = edited.api("GET", "docs/openapi.json", key="")
    assert status == 404, body


def test_gateway_responses_follow_the_template(edited: Running) -> None:
    status, body = edited.api("GET", "cities", key="")
    assert status == 401
    assert body == {
        "code": "unauthorized",
        "message": "edited: missing or unknown key (Authorization: Bearer <key>)",
    }


def test_a_request_waiting_on_a_slow_load_gets_429(edited: Running) -> None:
    # GIVEN a model artifact dropped into mme/ (as the notebook's section 8 copies
    # them), on an endpoint whose loads take 1.5 s and that lets requests wait 0.3 s
    from citymodels_devkit.linear_learner import fit

    features = [[1995.0 + i % 20, 2000.0 + 37 * i, 3, 2, 1, 1, 1, 0, 0, 1] for i in range(40)]
    model, _ = fit(features, [100_000.0 + 150 * r[1] for r in features], None, None,
                   {"predictor_type": "regressor", "feature_dim": "10"})  # fmt: skip
    edited.client("s3").put_object(
        Bucket=edited.bucket, Key="mme/Slow/model.tar.gz", Body=model.to_artifact_bytes()
    )
    # a client that does not retry 429 itself (botocore's legacy mode would)
    runtime = boto3.client(
        "sagemaker-runtime",
        endpoint_url=edited.outputs["AwsEndpointUrl"],
        region_name="us-east-1",
        config=Config(retries={"mode": "standard", "max_attempts": 1}),
    )
    request = {
        "EndpointName": edited.outputs["EndpointName"],
        "TargetModel": "Slow/model.tar.gz",
        "ContentType": "text/csv",
        "Body": b"1995,2500,3,2,1,1,y,n\n",
    }
    # WHEN the first request waits on the load THEN it gets ModelNotReadyException (429)
    with pytest.raises(ClientError) as err:
        runtime.invoke_endpoint(**request)
    assert err.value.response["Error"]["Code"] == "ModelNotReadyException"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    # AND the load went on: once it is done, the model answers
    time.sleep(1.6)
    answer = runtime.invoke_endpoint(**request)
    assert json.loads(answer["Body"].read())["predictions"][0]["score"] > 0
