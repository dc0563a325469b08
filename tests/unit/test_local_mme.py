"""The local multi-model endpoint: tiers, single-flight loads, errors on the wire, metrics.

Error answers are checked through a real boto3 ``sagemaker-runtime`` client talking to a
tiny HTTP server on 127.0.0.1 that serves :meth:`InvokeResult.render`, so the codes and
fields are where botocore puts them for AWS's answers.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from moto import mock_aws

from citymodels_devkit.linear_learner import LinearLearnerModel, Normalization, load_model
from citymodels_devkit.local.mme.metrics import ENDPOINTS_NAMESPACE, SAGEMAKER_NAMESPACE
from citymodels_devkit.local.mme.models import (
    EndpointOptions,
    ModelArtifactMissing,
    MultiModelEndpoint,
    estimate_model_bytes,
)
from citymodels_devkit.local.mme.responses import InvokeResult
from citymodels_devkit.paths import LAYER_DIR, PREPROCESSING_DIR, load_container_module

ENDPOINT = "cmtest-endpoint"
MB = 1024 * 1024
CSV_ROW = "1995,3000,3,2,1.0,2,y,n"
ENCODED_ROW = [1995.0, 3000.0, 3.0, 2.0, 1.0, 2.0, 1.0, 0.0, 0.0, 1.0]
JSON_INSTANCE = {
    "YEAR_BUILT": 1995,
    "SQUARE_FEET": 3000,
    "NUM_BEDROOMS": 3,
    "NUM_BATHROOMS": 2,
    "LOT_ACRES": 1.0,
    "GARAGE_SPACES": 2,
    "FRONT_PORCH": "y",
    "DECK": "n",
}


def city_model(seed: int) -> LinearLearnerModel:
    """A model with distinct, known weights (same shape for every seed)."""
    weights = tuple(float(seed + j) for j in range(10))
    return LinearLearnerModel(
        weights=weights,
        bias=1000.0 + seed,
        normalization=Normalization((0.0,) * 10, (1.0,) * 10),
    )


def expected_score(model: LinearLearnerModel, row: list[float] = ENCODED_ROW) -> float:
    return model.bias + sum(w * x for w, x in zip(model.weights, row, strict=True))


def target(name: str) -> str:
    return f"{name}/20261125T000000000Z-00.tar.gz"


class Artifacts:
    """The mme/ prefix: target model -> artifact bytes, counting fetches."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.fetches: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, name: str, seed: int) -> tuple[str, LinearLearnerModel]:
        model = city_model(seed)
        self.objects[target(name)] = model.to_artifact_bytes()
        return target(name), model

    def fetch(self, target_model: str) -> bytes:
        with self._lock:
            self.fetches[target_model] = self.fetches.get(target_model, 0) + 1
        try:
            return self.objects[target_model]
        except KeyError:
            raise ModelArtifactMissing(f"s3://cmtest-data/mme/{target_model}") from None


def preprocessor_artifact(inference_source: str | None = None) -> bytes:
    """Build the preprocessor's model.tar.gz as the deployment does: preprocessor.json and
    code/ (inference.py and the citymodels package)."""
    inference = load_container_module("inference")
    members: dict[str, bytes] = {
        "preprocessor.json": json.dumps(inference.preprocessor_document()).encode(),
        "code/inference.py": (
            inference_source or (PREPROCESSING_DIR / "inference.py").read_text()
        ).encode(),
    }
    for path in sorted((LAYER_DIR / "citymodels").glob("*.py")):
        members[f"code/citymodels/{path.name}"] = path.read_bytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def preprocessor() -> bytes:
    return preprocessor_artifact()


@pytest.fixture
def artifacts() -> Artifacts:
    return Artifacts()


@pytest.fixture
def make_endpoint(
    tmp_path: Path, preprocessor: bytes, artifacts: Artifacts
) -> Iterator[Callable[..., MultiModelEndpoint]]:
    made: list[MultiModelEndpoint] = []

    def make(preprocessor_model: Any = preprocessor, **options: Any) -> MultiModelEndpoint:
        """An endpoint with ``preprocessor_model`` and ``EndpointOptions(**options)``."""
        endpoint = MultiModelEndpoint(
            ENDPOINT,
            fetch_model=artifacts.fetch,
            preprocessor=preprocessor_model,
            cache_dir=tmp_path / f"cache{len(made)}",
            options=EndpointOptions(**options),
        )
        made.append(endpoint)
        return endpoint

    yield make
    for endpoint in made:
        endpoint.close()


class _InvocationsHandler(BaseHTTPRequestHandler):
    """POST /endpoints/{name}/invocations, answered by the endpoint's render()."""

    server: _EndpointServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        endpoint = self.server.endpoint
        if self.path == f"/endpoints/{endpoint.name}/invocations":
            result = endpoint.invoke(
                self.headers.get("X-Amzn-SageMaker-Target-Model", ""),
                body,
                self.headers.get("Content-Type", ""),
                self.headers.get("Accept", ""),
            )
        else:
            result = InvokeResult.validation_error(f"Endpoint for {self.path} not found.")
        status, headers, payload = result.render()
        self.send_response(status)
        for name, value in headers:
            self.send_header(name.decode("latin-1"), value.decode("latin-1"))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _EndpointServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, endpoint: MultiModelEndpoint) -> None:
        super().__init__(("127.0.0.1", 0), _InvocationsHandler)
        self.endpoint = endpoint


@contextmanager
def runtime_client(endpoint: MultiModelEndpoint) -> Iterator[Any]:
    """A boto3 sagemaker-runtime client (no retries) reaching ``endpoint`` over HTTP."""
    server = _EndpointServer(endpoint)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield boto3.client(
            "sagemaker-runtime",
            endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def invoke_via_boto3(client: Any, target_model: str, body: str, **extra: str) -> Any:
    return client.invoke_endpoint(
        EndpointName=ENDPOINT,
        TargetModel=target_model,
        ContentType=extra.pop("ContentType", "text/csv"),
        Body=body.encode(),
        **extra,
    )


def scores(body: bytes) -> list[float]:
    return [p["score"] for p in json.loads(body)["predictions"]]


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def metric(batches: list[dict[str, Any]], namespace: str, name: str) -> dict[str, Any]:
    for batch in batches:
        if batch["Namespace"] == namespace:
            for datum in batch["MetricData"]:
                if datum["MetricName"] == name:
                    return dict(datum)
    raise AssertionError(f"{namespace} {name} not in {batches}")


# -- loading and tiers ------------------------------------------------------------------


def test_first_call_loads_the_model_and_the_second_hits(make_endpoint, artifacts) -> None:
    # GIVEN an endpoint and one published model
    name, model = artifacts.add("Chicago_IL", 1)
    endpoint = make_endpoint()
    # WHEN it is called twice
    first = endpoint.invoke(name, CSV_ROW.encode(), "text/csv", "application/json")
    second = endpoint.invoke(name, CSV_ROW.encode(), "text/csv", "application/json")
    # THEN both answer with the model's prediction; one download, one load, then a hit
    for result in (first, second):
        assert result.ok, result.message
        assert result.content_type == "application/json"
        assert scores(result.body) == [pytest.approx(expected_score(model))]
    stats = endpoint.stats()
    assert (stats.downloads, stats.loads, stats.misses, stats.hits) == (1, 1, 1, 1)
    assert stats.loaded_models == (name,)
    assert stats.disk_models == (name,)


def test_json_and_csv_bodies_give_the_same_predictions(make_endpoint, artifacts) -> None:
    name, model = artifacts.add("Chicago_IL", 2)
    endpoint = make_endpoint()
    csv_body = f"{CSV_ROW}\n1995,3000,3,2,1.0,2,n,y\n".encode()
    json_body = json.dumps(
        {"instances": [JSON_INSTANCE, {**JSON_INSTANCE, "FRONT_PORCH": "n", "DECK": "y"}]}
    ).encode()

    from_csv = endpoint.invoke(name, csv_body, "text/csv", "application/json")
    from_json = endpoint.invoke(name, json_body, "application/json; charset=utf-8", "*/*")

    assert from_csv.ok and from_json.ok, (from_csv.message, from_json.message)
    flipped = [*ENCODED_ROW[:6], 0.0, 1.0, 1.0, 0.0]
    expected = [expected_score(model), expected_score(model, flipped)]
    assert scores(from_csv.body) == pytest.approx(expected)
    assert scores(from_json.body) == pytest.approx(expected)


def test_concurrent_first_calls_download_and_load_once(make_endpoint, artifacts) -> None:
    # GIVEN a model whose load takes a moment
    name, model = artifacts.add("Austin_TX", 3)
    endpoint = make_endpoint(load_delay_seconds=0.2)
    start = threading.Barrier(16)
    results = []

    def call() -> None:
        start.wait()
        results.append(endpoint.invoke(name, CSV_ROW.encode(), "text/csv", "application/json"))

    # WHEN 16 threads call it at once
    threads = [threading.Thread(target=call) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # THEN every call is answered, from one download and one load
    assert len(results) == 16
    assert all(r.ok and scores(r.body) == [pytest.approx(expected_score(model))] for r in results)
    stats = endpoint.stats()
    assert artifacts.fetches == {name: 1}
    assert (stats.downloads, stats.loads, stats.hits + stats.misses) == (1, 1, 16)
    assert stats.misses > 1  # several waited on the one load (all 16, unless the box stalls)


def test_lru_eviction_under_max_models_then_reload_from_disk(make_endpoint, artifacts) -> None:
    # GIVEN room for two models in memory
    a, _ = artifacts.add("A", 1)
    b, model_b = artifacts.add("B", 2)
    c, _ = artifacts.add("C", 3)
    endpoint = make_endpoint(max_models=2)
    for name in (a, b, a, c):  # A used again after B: B is the least recently used
        assert endpoint.invoke(name, CSV_ROW.encode(), "text/csv", "").ok
    stats = endpoint.stats()
    assert stats.loaded_models == (a, c)
    assert stats.evictions == 1
    # WHEN the evicted model is called again
    again = endpoint.invoke(b, CSV_ROW.encode(), "text/csv", "")
    # THEN it answers, reloaded from the disk tier without a second download
    assert scores(again.body) == [pytest.approx(expected_score(model_b))]
    stats = endpoint.stats()
    assert artifacts.fetches == {a: 1, b: 1, c: 1}
    assert (stats.downloads, stats.loads, stats.evictions) == (3, 4, 2)
    assert stats.loaded_models == (c, b)
    assert set(stats.disk_models) == {a, b, c}


def test_lru_eviction_under_a_small_memory_bound(make_endpoint, artifacts) -> None:
    # GIVEN a memory bound that holds two models (by the documented size estimate)
    names = [artifacts.add(city, seed)[0] for city, seed in (("A", 1), ("B", 2), ("C", 3))]
    size = max(estimate_model_bytes(load_model(artifacts.objects[n])) for n in names)
    endpoint = make_endpoint(max_memory_mb=2.5 * size / MB)
    # WHEN three models are called
    for name in names:
        assert endpoint.invoke(name, CSV_ROW.encode(), "text/csv", "").ok
    # THEN the first is evicted, and memory stays within the bound
    stats = endpoint.stats()
    assert stats.loaded_models == tuple(names[1:])
    assert stats.memory_bytes <= 2.5 * size
    # AND it comes back from disk
    assert endpoint.invoke(names[0], CSV_ROW.encode(), "text/csv", "").ok
    assert endpoint.stats().downloads == 3
    assert endpoint.stats().loaded_models == (names[2], names[0])


def test_high_water_mark_evicts_and_memory_utilization_follows_the_formula(
    make_endpoint, artifacts
) -> None:
    # GIVEN 1,000 MB of memory, 500 MB used without models, 100 MB per model, and
    # eviction before MemoryUtilization would pass 75%
    names = [artifacts.add(city, seed)[0] for city, seed in (("A", 1), ("B", 2), ("C", 3))]
    endpoint = make_endpoint(
        instance_memory_mb=1000, baseline_memory_mb=500, model_overhead_mb=100, high_water_mark=75
    )
    per_model = estimate_model_bytes(load_model(artifacts.objects[names[0]])) + 100 * MB
    # WHEN two models are loaded: 70% fits
    for name in names[:2]:
        assert endpoint.invoke(name, CSV_ROW.encode(), "text/csv", "").ok
    two = (500 * MB + 2 * per_model) / (1000 * MB) * 100
    assert endpoint.stats().memory_utilization == pytest.approx(two, rel=1e-6)
    # AND a third would make 80%: the least recently used goes first
    assert endpoint.invoke(names[2], CSV_ROW.encode(), "text/csv", "").ok
    stats = endpoint.stats()
    assert stats.loaded_models == (names[1], names[2])
    # THEN the published metrics say so
    batches = endpoint.drain_metrics()
    assert metric(batches, ENDPOINTS_NAMESPACE, "LoadedModelCount")["Value"] == 2
    memory = metric(batches, ENDPOINTS_NAMESPACE, "MemoryUtilization")
    assert memory["Unit"] == "Percent"
    assert memory["Value"] == pytest.approx(two, rel=1e-6)
    assert 70 < memory["Value"] <= 75


def test_disk_tier_is_bounded_and_drops_artifacts_of_unloaded_models_first(
    make_endpoint, artifacts
) -> None:
    # GIVEN a disk that holds two artifacts and memory for one model
    names = [artifacts.add(city, seed)[0] for city, seed in (("A", 1), ("B", 2), ("C", 3))]
    artifact_size = max(len(artifacts.objects[n]) for n in names)
    endpoint = make_endpoint(max_models=1, disk_capacity_mb=2.5 * artifact_size / MB)
    for name in names:
        assert endpoint.invoke(name, CSV_ROW.encode(), "text/csv", "").ok
    # THEN the oldest artifact left the disk, and DiskUtilization is its share
    stats = endpoint.stats()
    assert stats.disk_models == (names[1], names[2])
    disk = metric(endpoint.drain_metrics(), ENDPOINTS_NAMESPACE, "DiskUtilization")["Value"]
    assert disk == pytest.approx(stats.disk_bytes / (2.5 * artifact_size) * 100)
    # AND calling it again downloads it again
    assert endpoint.invoke(names[0], CSV_ROW.encode(), "text/csv", "").ok
    assert artifacts.fetches[names[0]] == 2


# -- errors, through boto3 --------------------------------------------------------------


def test_a_successful_answer_parses_in_boto3(make_endpoint, artifacts) -> None:
    name, model = artifacts.add("Chicago_IL", 4)
    endpoint = make_endpoint()
    with runtime_client(endpoint) as client:
        answer = invoke_via_boto3(client, name, CSV_ROW, Accept="application/json")
    assert answer["ContentType"] == "application/json"
    assert answer["InvokedProductionVariant"] == "AllTraffic"
    assert answer["ResponseMetadata"]["RequestId"]
    assert scores(answer["Body"].read()) == [pytest.approx(expected_score(model))]


def test_unknown_model_is_a_validation_error_in_boto3(make_endpoint) -> None:
    endpoint = make_endpoint()
    missing = target("Nowhere")
    with runtime_client(endpoint) as client, pytest.raises(ClientError) as caught:
        invoke_via_boto3(client, missing, CSV_ROW)
    response = caught.value.response
    assert response["Error"]["Code"] == "ValidationError"
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"] == "ValidationError"
    message = response["Error"]["Message"]
    assert "Failed to download model data" in message
    assert f"target model {missing}" in message
    assert f"s3://cmtest-data/mme/{missing}" in message
    assert isinstance(caught.value, client.exceptions.ValidationError)
    assert endpoint.stats().load_failures == 1


def test_corrupt_artifact_is_a_model_error_in_boto3(make_endpoint, artifacts) -> None:
    # GIVEN an artifact that is not a model
    corrupt = target("Broken")
    artifacts.objects[corrupt] = b"\x1f\x8bthis is not a tar.gz"
    endpoint = make_endpoint()
    # WHEN it is called
    with runtime_client(endpoint) as client, pytest.raises(ClientError) as caught:
        invoke_via_boto3(client, corrupt, CSV_ROW)
    # THEN boto3 sees ModelError 424 with the container's status, message and log stream
    response = caught.value.response
    assert response["Error"]["Code"] == "ModelError"
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert response["OriginalStatusCode"] == 500
    assert corrupt in response["OriginalMessage"]
    assert response["LogStreamArn"] == (
        f"arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/Endpoints/{ENDPOINT}"
    )
    assert response["Error"]["Message"].startswith(
        "Received server error (500) from linear-learner"
    )
    # AND the bad artifact is not kept: nothing loaded, nothing on disk
    stats = endpoint.stats()
    assert (stats.loaded_models, stats.disk_models, stats.load_failures) == ((), (), 1)


def test_bad_rows_are_a_model_error_naming_row_and_field_in_boto3(make_endpoint, artifacts) -> None:
    name, _ = artifacts.add("Chicago_IL", 5)
    endpoint = make_endpoint()
    with runtime_client(endpoint) as client, pytest.raises(ClientError) as caught:
        invoke_via_boto3(client, name, f"{CSV_ROW}\n1995,-5,3,2,1.0,2,y,n\n")
    response = caught.value.response
    assert response["Error"]["Code"] == "ModelError"
    assert response["OriginalStatusCode"] == 400
    assert response["OriginalMessage"].startswith("row 2: SQUARE_FEET must be")
    assert "from preprocessor" in response["Error"]["Message"]
    assert "row 2: SQUARE_FEET" in response["Error"]["Message"]


def test_json_bad_field_and_unsupported_accept_are_model_errors(make_endpoint, artifacts) -> None:
    name, _ = artifacts.add("Chicago_IL", 6)
    endpoint = make_endpoint()
    typo = json.dumps({"instances": [{**JSON_INSTANCE, "DEKC": "n"}]}).encode()

    bad_field = endpoint.invoke(name, typo, "application/json", "application/json")
    bad_accept = endpoint.invoke(name, CSV_ROW.encode(), "text/csv", "text/html")

    assert (bad_field.status, bad_field.error_code) == (424, "ModelError")
    assert bad_field.original_status_code == 400
    assert "row 1: unknown field 'DEKC'" in (bad_field.message or "")
    assert (bad_accept.status, bad_accept.original_status_code) == (424, 400)
    assert "from linear-learner" in (bad_accept.message or "")


def test_slow_load_is_model_not_ready_then_a_later_call_succeeds(make_endpoint, artifacts) -> None:
    # GIVEN a load that takes longer than a request may wait
    name, model = artifacts.add("Seattle_WA", 7)
    endpoint = make_endpoint(load_delay_seconds=0.4, load_wait_seconds=0.05)
    with runtime_client(endpoint) as client:
        # WHEN the model is called before it is loaded
        with pytest.raises(ClientError) as caught:
            invoke_via_boto3(client, name, CSV_ROW)
        # THEN boto3 sees ModelNotReadyException (429) ...
        response = caught.value.response
        assert response["Error"]["Code"] == "ModelNotReadyException"
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 429
        assert name in response["Error"]["Message"]
        assert endpoint.stats().not_ready == 1
        # ... the load carries on in the background, and a later call succeeds
        wait_until(lambda: endpoint.stats().loads == 1)
        answer = invoke_via_boto3(client, name, CSV_ROW)
    assert scores(answer["Body"].read()) == [pytest.approx(expected_score(model))]
    assert artifacts.fetches == {name: 1}


@pytest.mark.parametrize(
    ("target_model", "reason"),
    [
        ("", "length greater than or equal to 1"),
        ("x" * 1025, "length less than or equal to 1024"),
        ("Chicago_IL/../secret.tar.gz", "without '..'"),
        ("/Chicago_IL/v.tar.gz", "relative"),
        (" Chicago_IL/v.tar.gz", "regular expression"),
    ],
)
def test_invalid_target_models_are_validation_errors(
    make_endpoint, artifacts, target_model: str, reason: str
) -> None:
    endpoint = make_endpoint()
    result = endpoint.invoke(target_model, CSV_ROW.encode(), "text/csv", "")
    assert (result.status, result.error_code) == (400, "ValidationError")
    assert reason in (result.message or "")
    assert artifacts.fetches == {}


def test_path_traversal_target_model_is_rejected_in_boto3(make_endpoint, artifacts) -> None:
    endpoint = make_endpoint()
    with runtime_client(endpoint) as client, pytest.raises(ClientError) as caught:
        invoke_via_boto3(client, "A/../../etc/passwd", CSV_ROW)
    assert caught.value.response["Error"]["Code"] == "ValidationError"
    assert artifacts.fetches == {}


# -- metrics ----------------------------------------------------------------------------


def test_miss_then_hit_is_a_cache_hit_ratio_of_one_half(make_endpoint, artifacts) -> None:
    # GIVEN a miss then a hit
    name, _ = artifacts.add("Chicago_IL", 8)
    endpoint = make_endpoint(wall_clock=lambda: 1_790_000_000.0)
    for _ in range(2):
        assert endpoint.invoke(name, CSV_ROW.encode(), "text/csv", "").ok
    # WHEN the metrics are drained
    batches = endpoint.drain_metrics()
    # THEN ModelCacheHit's Average is 0.5, and every MME metric is there with its unit
    hit = metric(batches, SAGEMAKER_NAMESPACE, "ModelCacheHit")
    values = hit["StatisticValues"]
    assert values["Sum"] / values["SampleCount"] == 0.5
    assert hit["Dimensions"] == [
        {"Name": "EndpointName", "Value": ENDPOINT},
        {"Name": "VariantName", "Value": "AllTraffic"},
    ]
    assert hit["Timestamp"] == datetime.fromtimestamp(1_790_000_000.0, UTC)
    for name_, count in (
        ("Invocations", 2),
        ("ModelLatency", 2),
        ("ModelLoadingWaitTime", 1),
        ("ModelDownloadingTime", 1),
        ("ModelLoadingTime", 1),
    ):
        datum = metric(batches, SAGEMAKER_NAMESPACE, name_)
        assert datum["StatisticValues"]["SampleCount"] == count, name_
        expected_unit = "None" if name_ == "Invocations" else "Microseconds"
        assert datum["Unit"] == expected_unit
    assert metric(batches, ENDPOINTS_NAMESPACE, "LoadedModelCount")["Value"] == 1
    # AND a drain with no traffic since has the gauges only
    assert [b["Namespace"] for b in endpoint.drain_metrics()] == [ENDPOINTS_NAMESPACE]


def test_eviction_metrics_and_loaded_model_count(make_endpoint, artifacts) -> None:
    names = [artifacts.add(city, seed)[0] for city, seed in (("A", 1), ("B", 2), ("C", 3))]
    endpoint = make_endpoint(max_models=1)
    for name in [*names, names[0]]:
        assert endpoint.invoke(name, CSV_ROW.encode(), "text/csv", "").ok
    batches = endpoint.drain_metrics()
    assert metric(batches, ENDPOINTS_NAMESPACE, "LoadedModelCount")["Value"] == 1
    unloading = metric(batches, SAGEMAKER_NAMESPACE, "ModelUnloadingTime")
    assert unloading["StatisticValues"]["SampleCount"] == 3
    assert unloading["Unit"] == "Microseconds"
    downloading = metric(batches, SAGEMAKER_NAMESPACE, "ModelDownloadingTime")
    loading = metric(batches, SAGEMAKER_NAMESPACE, "ModelLoadingTime")
    assert downloading["StatisticValues"]["SampleCount"] == 3  # the 4th load came from disk
    assert loading["StatisticValues"]["SampleCount"] == 4


def test_drained_metrics_go_to_cloudwatch_as_they_are(
    make_endpoint, artifacts, aws_credentials
) -> None:
    # GIVEN a miss, a hit and a model error
    name, _ = artifacts.add("Chicago_IL", 9)
    now = datetime.now(UTC).replace(microsecond=0)
    endpoint = make_endpoint(wall_clock=now.timestamp)
    endpoint.invoke(name, CSV_ROW.encode(), "text/csv", "")
    endpoint.invoke(name, CSV_ROW.encode(), "text/csv", "")
    endpoint.invoke(name, b"1995,oops,3,2,1.0,2,y,n", "text/csv", "")
    with mock_aws():
        cloudwatch = boto3.client("cloudwatch", region_name="us-east-1")
        # WHEN each batch is put as drained
        for batch in endpoint.drain_metrics():
            cloudwatch.put_metric_data(**batch)

        # THEN CloudWatch's statistics are the MME's
        def statistic(namespace: str, metric_name: str, stat: str) -> float:
            answer = cloudwatch.get_metric_statistics(
                Namespace=namespace,
                MetricName=metric_name,
                Dimensions=[
                    {"Name": "EndpointName", "Value": ENDPOINT},
                    {"Name": "VariantName", "Value": "AllTraffic"},
                ],
                StartTime=now - timedelta(minutes=1),
                EndTime=now + timedelta(minutes=1),
                Period=60,
                Statistics=[stat],
            )
            (point,) = answer["Datapoints"]
            return float(point[stat])

        assert statistic(SAGEMAKER_NAMESPACE, "ModelCacheHit", "Average") == pytest.approx(2 / 3)
        assert statistic(SAGEMAKER_NAMESPACE, "Invocations", "Sum") == 3
        assert statistic(SAGEMAKER_NAMESPACE, "Invocation4XXErrors", "Sum") == 1
        assert statistic(ENDPOINTS_NAMESPACE, "LoadedModelCount", "Maximum") == 1


# -- the preprocessor, as the scikit-learn container loads it ----------------------------


def test_preprocessor_code_comes_from_the_artifact(make_endpoint, artifacts, tmp_path) -> None:
    # GIVEN a preprocessor artifact whose inference.py accepts one row per request
    source = (PREPROCESSING_DIR / "inference.py").read_text() + "\nMAX_ROWS = 1\n"
    artifact = tmp_path / "model.tar.gz"
    artifact.write_bytes(preprocessor_artifact(source))
    name, _ = artifacts.add("Chicago_IL", 10)
    path_before = list(sys.path)
    endpoint = make_endpoint(artifact)
    # WHEN two rows are sent
    result = endpoint.invoke(name, f"{CSV_ROW}\n{CSV_ROW}\n".encode(), "text/csv", "")
    # THEN the artifact's code answered, and importing it left sys.path alone
    assert result.original_status_code == 400
    assert "at most 1 are accepted" in (result.message or "")
    assert endpoint.invoke(name, CSV_ROW.encode(), "text/csv", "").ok
    assert sys.path == path_before


def test_preprocessor_for_another_schema_refuses_to_start(tmp_path, artifacts) -> None:
    # GIVEN an extracted preprocessor built for another schema version
    model_dir = tmp_path / "preprocessor"
    model_dir.mkdir()
    (model_dir / "preprocessor.json").write_text(json.dumps({"schema_version": "999"}))
    # WHEN the endpoint starts, THEN model_fn's error stops it
    with pytest.raises(ValueError, match="schema 999"):
        MultiModelEndpoint(
            ENDPOINT,
            fetch_model=artifacts.fetch,
            preprocessor=model_dir,
            cache_dir=tmp_path / "cache",
        )


# -- thread safety ----------------------------------------------------------------------


def test_concurrent_traffic_with_evictions_stays_consistent(make_endpoint, artifacts) -> None:
    # GIVEN five models, room for two, and eight threads calling them in turn
    models = [artifacts.add(f"City{i}", i) for i in range(5)]
    endpoint = make_endpoint(max_models=2)
    failures: list[str] = []

    def traffic(offset: int) -> None:
        for i in range(150):
            name, model = models[(offset + i) % len(models)]
            result = endpoint.invoke(name, CSV_ROW.encode(), "text/csv", "")
            if not result.ok or scores(result.body) != [pytest.approx(expected_score(model))]:
                failures.append(f"{name}: {result.status} {result.message}")

    threads = [threading.Thread(target=traffic, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # THEN every answer is right and the counters add up
    assert failures == []
    stats = endpoint.stats()
    assert stats.hits + stats.misses == 8 * 150
    assert len(stats.loaded_models) <= 2
    assert stats.downloads == 5
    assert stats.loads - stats.evictions == len(stats.loaded_models)
    cache_hit = metric(endpoint.drain_metrics(), SAGEMAKER_NAMESPACE, "ModelCacheHit")
    assert cache_hit["StatisticValues"]["SampleCount"] == 8 * 150
    assert cache_hit["StatisticValues"]["Sum"] == stats.hits
