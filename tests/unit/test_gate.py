"""The quality gate's numbers and its refusals of bad processing output.

S3 is moto; the endpoint is a real boto3 sagemaker-runtime client under botocore's
Stubber, answering as Linear Learner does.
"""

from __future__ import annotations

import io
import json
from typing import Any

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from citymodels import layout
from citymodels.endpoint import EndpointClient
from citymodels.gate import GateDataError, run_gate
from tests.aws import BUCKET, Aws

CITY, VERSION = "Austin_TX", "20261204T000000000Z-00000000000000000000000000000001"
ROW = "1995,2500,3,2.5,1.0,2,y,n"


@pytest.fixture
def s3(aws: Aws) -> Any:
    """S3 of the shared moto account (tests/aws.py), with its DataBucket."""
    return aws.s3


def put(s3: Any, split: str, text: str) -> None:
    s3.put_object(Bucket=BUCKET, Key=layout.processed_key(CITY, VERSION, split), Body=text)


def endpoint(*answers: list[float]) -> tuple[EndpointClient, Stubber]:
    runtime = boto3.client("sagemaker-runtime", region_name="us-east-1")
    stubber = Stubber(runtime)
    for prices in answers:
        body = json.dumps({"predictions": [{"score": p} for p in prices]}).encode()
        stubber.add_response(
            "invoke_endpoint",
            {"Body": StreamingBody(io.BytesIO(body), len(body)), "ContentType": "application/json"},
            {
                "EndpointName": "cmtest-endpoint",
                "TargetModel": layout.target_model(CITY, VERSION),
                "ContentType": "text/csv",
                "Accept": "application/json",
                "Body": f"{ROW}\n{ROW}\n".encode(),
            },
        )
    stubber.activate()
    return EndpointClient("cmtest-endpoint", runtime), stubber


def gate(s3: Any, client: EndpointClient) -> Any:
    return run_gate(
        s3=s3,
        endpoint=client,
        bucket=BUCKET,
        city=CITY,
        version=VERSION,
        current_version=None,
        tolerance=0.05,
    )


@pytest.mark.parametrize(
    ("labels", "median"),
    [([100.0, 300.0, 200.0], 200.0), ([100.0, 400.0, 200.0, 300.0], 250.0)],
    ids=["odd: the middle label", "even: the mean of the two middle labels"],
)
def test_the_baseline_is_the_training_labels_median(
    s3: Any, labels: list[float], median: float
) -> None:
    # GIVEN training labels and two test rows priced 240 and 260
    put(s3, "train", "".join(f"{label},0,0\n" for label in labels))
    put(s3, "test-raw", f"{ROW},240\n{ROW},260\n")
    client, stubber = endpoint([245.0, 255.0])
    # WHEN the gate judges a candidate that predicts 245 and 255
    result = gate(s3, client)
    # THEN its baseline is the median, and the candidate beats it (MAE 5 vs the median's)
    assert result.training_median == median
    assert result.median_mae == (abs(240 - median) + abs(260 - median)) / 2
    assert result.candidate_mae == 5.0
    assert result.passed
    stubber.assert_no_pending_responses()


@pytest.mark.parametrize(
    ("train", "test_raw", "message"),
    [
        (None, f"{ROW},240\n", "does not exist (did the processing job write it?)"),
        ("100,0\nabc,0\n", f"{ROW},240\n", "line 2: the label is not a number"),
        ("\n", f"{ROW},240\n", "has no rows"),
        ("100,0\n", "1995,2500,240\n", "line 1: expected 9 fields, found 3"),
        ("100,0\n", f"{ROW},240\n{ROW},n/a\n", "line 2: the price is not a number"),
        ("100,0\n", "\n\n", "no test rows in"),
    ],
    ids=["no train", "bad label", "empty train", "short row", "bad price", "empty test"],
)
def test_bad_processing_output_is_a_gate_data_error_naming_the_file_and_line(
    s3: Any, train: str | None, test_raw: str, message: str
) -> None:
    if train is not None:
        put(s3, "train", train)
    put(s3, "test-raw", test_raw)
    client, stubber = endpoint()  # no answer: the endpoint is never called
    with pytest.raises(GateDataError, match="processed/") as error:
        gate(s3, client)
    assert message in str(error.value)
    stubber.assert_no_pending_responses()
