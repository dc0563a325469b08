"""Benchmark the local stack's AWS endpoint: the invocation hot path and job run times.

Prints one JSON object to stdout:

- ``invoke_us``: ``POST /endpoints/{name}/invocations`` end to end over HTTP, one
  persistent connection, client in the same process (uvicorn + httptools in a
  background thread), against a trivial endpoint object, for
  ``inline`` (the endpoint answers without blocking: ``invoke_nowait``, called on the
  event loop) and ``thread`` (only ``invoke``: run in the invocation thread pool), each
  with ``httpx`` and ``http.client``; p50 / p90 / p99 in microseconds after warm-up;
- ``floor_us``: the same two clients against a bare ASGI app answering the same bytes
  under the same server: what uvicorn and the client cost without the front app;
- ``app_call_us``: one warm invocation through the front app called directly (no HTTP);
- ``boto3_invoke_endpoint_us``: the same through ``sagemaker-runtime``'s
  ``invoke_endpoint`` (what a handler pays: signing, parsing);
- ``moto_head_object_us``: a moto call through the same port, for scale;
- ``jobs_s``: a 1,000-row city end to end: ``CreateProcessingJob`` (the real
  ``preprocess.py`` and its ``citymodels`` bundle, from S3) until Describe says
  Completed, then ``CreateTrainingJob`` (local Linear Learner, the notebook's
  hyperparameters) until Completed; workers already warm.

Run: ``python bench/bench_local_aws.py [--requests 3000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from citymodels_devkit.local.aws import LocalAwsServer, build_aws_app
from citymodels_devkit.paths import LAYER_DIR, PREPROCESSING_DIR
from tests.conftest import raw_rows, upload

BUCKET = "bench-data"
ANSWER = b'{"predictions":[{"score":412345.5}]}'
HEADERS = {
    "Content-Type": "text/csv",
    "Accept": "application/json",
    "X-Amzn-SageMaker-Target-Model": "NewYork_NY/v1.tar.gz",
}
BODY = b"2005,3000,3,2,1.1,2,y,n"
RUN = "20261125T004255123Z-0062E99A88DC40746000000000000000"


class Threaded:
    """An endpoint with only ``invoke``: the app runs it in a thread."""

    def invoke(
        self, target_model: str, body: bytes, content_type: str, accept: str
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return 200, [(b"content-type", b"application/json")], ANSWER


class Inline(Threaded):
    """An endpoint that answers from memory: the app calls it on the event loop."""

    def invoke_nowait(
        self, target_model: str, body: bytes, content_type: str, accept: str
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return self.invoke(target_model, body, content_type, accept)


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pick(quantile: float) -> float:
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]

    return {
        "p50": round(statistics.median(ordered), 1),
        "p90": round(pick(0.9), 1),
        "p99": round(pick(0.99), 1),
    }


def timed(call: Callable[[], Any], requests: int, warmup: int = 300) -> dict[str, float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(requests):
        started = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - started) / 1000)
    return percentiles(samples)


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The floor: answers every request with the endpoint's bytes, nothing else."""
    if scope["type"] != "http":
        return
    await receive()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"36")],
        }
    )
    await send({"type": "http.response.body", "body": ANSWER})


def bench_app_call(app: Any, calls: int = 20000) -> float:
    """Microseconds per warm invocation through the app itself, no HTTP."""
    headers = [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/endpoints/inline/invocations",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), *headers, (b"content-length", b"23")],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    async def run() -> float:
        for _ in range(1000):
            await app(scope, receive, send)
        started = time.perf_counter()
        for _ in range(calls):
            await app(scope, receive, send)
        return (time.perf_counter() - started) / calls * 1e6

    return round(asyncio.run(run()), 1)


def bench_invocations(
    server: LocalAwsServer, requests: int, names: tuple[str, ...]
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in names:
        path = f"/endpoints/{name}/invocations"
        with httpx.Client(base_url=server.url) as client:

            def via_httpx(client: httpx.Client = client, path: str = path) -> None:
                answer = client.post(path, content=BODY, headers=HEADERS)
                assert answer.status_code == 200 and answer.content == ANSWER

            httpx_stats = timed(via_httpx, requests)
        connection = http.client.HTTPConnection("127.0.0.1", server.port)

        def via_http_client(connection: Any = connection, path: str = path) -> None:
            connection.request("POST", path, body=BODY, headers=HEADERS)
            answer = connection.getresponse()
            assert answer.status == 200 and answer.read() == ANSWER

        results[name] = {"httpx": httpx_stats, "http.client": timed(via_http_client, requests)}
        connection.close()
    return results


def client(server: LocalAwsServer, service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=server.url,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )


def bench_jobs(server: LocalAwsServer) -> dict[str, float]:
    s3, sagemaker = client(server, "s3"), client(server, "sagemaker")
    jobs = server.app.jobs  # type: ignore[attr-defined]
    s3.create_bucket(Bucket=BUCKET)
    s3.upload_file(
        str(PREPROCESSING_DIR / "preprocess.py"), BUCKET, "artifacts/processing/preprocess.py"
    )
    for path in sorted((LAYER_DIR / "citymodels").rglob("*.py")):
        key = f"artifacts/processing/citymodels/{path.relative_to(LAYER_DIR / 'citymodels')}"
        s3.upload_file(str(path), BUCKET, key)
    s3.put_object(Bucket=BUCKET, Key="raw/NewYork_NY/houses.csv", Body=upload(raw_rows(1000)))
    role = "arn:aws:iam::123456789012:role/bench"
    splits = ("train", "validation", "test", "test-raw")
    started = time.perf_counter()
    sagemaker.create_processing_job(
        ProcessingJobName="bench-processing",
        RoleArn=role,
        AppSpecification={
            "ImageUri": "sagemaker-scikit-learn:1.2-1-cpu-py3",
            "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/preprocess.py"],
        },
        ProcessingInputs=[
            {
                "InputName": name,
                "S3Input": {
                    "S3Uri": uri,
                    "LocalPath": f"/opt/ml/processing/input/{name}",
                    "S3DataType": "S3Prefix",
                    "S3InputMode": "File",
                },
            }
            for name, uri in (
                ("raw", f"s3://{BUCKET}/raw/NewYork_NY/houses.csv"),
                ("code", f"s3://{BUCKET}/artifacts/processing/"),
            )
        ],
        ProcessingOutputConfig={
            "Outputs": [
                {
                    "OutputName": split,
                    "S3Output": {
                        "S3Uri": f"s3://{BUCKET}/processed/NewYork_NY/{RUN}/{split}/",
                        "LocalPath": f"/opt/ml/processing/output/{split}",
                        "S3UploadMode": "EndOfJob",
                    },
                }
                for split in splits
            ]
        },
        ProcessingResources={
            "ClusterConfig": {
                "InstanceCount": 1,
                "InstanceType": "ml.m5.large",
                "VolumeSizeInGB": 30,
            }
        },
        Environment={"CITYMODELS_CITY": "NewYork_NY", "CITYMODELS_RUN": RUN},
    )
    processing = jobs.wait("processing", "bench-processing", 60)
    assert processing["ProcessingJobStatus"] == "Completed", processing
    processing_s = time.perf_counter() - started
    started = time.perf_counter()
    sagemaker.create_training_job(
        TrainingJobName="bench-training",
        RoleArn=role,
        AlgorithmSpecification={"TrainingImage": "linear-learner:1", "TrainingInputMode": "File"},
        HyperParameters={
            "feature_dim": "10",
            "predictor_type": "regressor",
            "mini_batch_size": "100",
            "epochs": "10",
            "num_models": "32",
            "loss": "absolute_loss",
        },
        InputDataConfig=[
            {
                "ChannelName": channel,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": f"s3://{BUCKET}/processed/NewYork_NY/{RUN}/{channel}/",
                    }
                },
                "ContentType": "text/csv;label_size=1",
            }
            for channel in ("train", "validation", "test")
        ],
        OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/training/NewYork_NY/{RUN}/"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 30},
        StoppingCondition={"MaxRuntimeInSeconds": 3600},
    )
    training = jobs.wait("training", "bench-training", 60)
    assert training["TrainingJobStatus"] == "Completed", training
    training_s = time.perf_counter() - started
    return {
        "processing": round(processing_s, 3),
        "training": round(training_s, 3),
        "total": round(processing_s + training_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="timed requests per case")
    args = parser.parse_args()
    with LocalAwsServer(bare_app, port=0) as server:
        floor = bench_invocations(server, args.requests, ("inline",))["inline"]
    app = build_aws_app(endpoints={"inline": Inline(), "thread": Threaded()})
    with LocalAwsServer(app, port=0) as server:
        time.sleep(3)  # let the job workers finish importing, off the measurements
        result: dict[str, Any] = {
            "invoke_us": bench_invocations(server, args.requests, ("inline", "thread")),
            "floor_us": floor,
            "app_call_us": bench_app_call(app),
        }
        runtime = client(server, "sagemaker-runtime")
        result["boto3_invoke_endpoint_us"] = timed(
            lambda: runtime.invoke_endpoint(
                EndpointName="inline", Body=BODY, ContentType="text/csv", TargetModel="a.tar.gz"
            )["Body"].read(),
            min(args.requests, 1000),
        )
        s3 = client(server, "s3")
        s3.create_bucket(Bucket="bench-head")
        s3.put_object(Bucket="bench-head", Key="k", Body=b"x")
        result["moto_head_object_us"] = timed(
            lambda: s3.head_object(Bucket="bench-head", Key="k"), 300, warmup=30
        )
        result["jobs_s"] = bench_jobs(server)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
