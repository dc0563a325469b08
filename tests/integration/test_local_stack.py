"""The SAM application on the local stack, driven as a user would: S3 uploads, the
HTTP API, boto3's sagemaker-runtime and CloudWatch — never handlers or internals."""

from __future__ import annotations

import concurrent.futures
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from citymodels_devkit.cli import main as cli_main
from citymodels_devkit.datagen import generate, true_price
from citymodels_devkit.local.template import load_yaml
from citymodels_devkit.paths import REPO_ROOT
from tests.conftest import raw_rows, upload
from tests.integration.conftest import Running

HOUSE = {
    "YEAR_BUILT": 1995, "SQUARE_FEET": 2500, "NUM_BEDROOMS": 3, "NUM_BATHROOMS": 2.5,
    "LOT_ACRES": 1.0, "GARAGE_SPACES": 2, "FRONT_PORCH": "y", "DECK": "n",
}  # fmt: skip


def city_csv(
    index: int, rows: int = 1000, noise: float = 5000.0, seed: int = 7
) -> tuple[str, bytes, object]:
    """A generated city's upload and ground truth (index 0 is NewYork_NY)."""
    for i, (city, table, truth) in enumerate(generate(index + 1, rows, seed=seed, noise=noise)):
        if i == index:
            return city, table.to_csv_bytes(), truth
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def new_york(local: Running) -> dict[str, object]:
    """NewYork_NY published once for the module."""
    city, data, truth = city_csv(0)
    key = local.upload(city, data, "v1.csv")
    final = local.wait_upload(city, key)
    assert final["status"] == "PUBLISHED", final
    return {"city": city, "truth": truth, "key": key}


def test_upload_is_published_and_answers_with_small_error(
    local: Running, new_york: dict[str, object]
) -> None:
    # GIVEN NewYork_NY's CSV dropped into raw/ (the fixture) WHEN we query 50 new houses
    _, table, _ = next(generate(1, 50, seed=99, noise=0.0))
    columns = {name: values.tolist() for name, values in table.columns().items()}
    instances = [
        {name: columns[name][i] for name in columns if name != "PRICE"} for i in range(len(table))
    ]
    status, body = local.api("POST", "cities/NewYork_NY/predictions", {"instances": instances})
    # THEN the current model answers, close to the true prices
    assert status == 200, body
    assert body["model_version"] == local.city("NewYork_NY")["current_version"]
    truth = true_price(new_york["truth"], table.columns())  # type: ignore[arg-type]
    errors = [abs(p["price"] - t) for p, t in zip(body["predictions"], truth, strict=True)]
    assert sum(errors) / len(errors) < 0.02 * float(sum(truth) / len(truth))


def test_bad_csv_is_rejected_with_a_report_and_no_job(local: Running) -> None:
    sagemaker = local.client("sagemaker")
    before = len(sagemaker.list_processing_jobs(MaxResults=100)["ProcessingJobSummaries"])
    key = local.upload(
        "Chicago_IL", upload([*raw_rows(60), "1990,big,3,2,1,1,y,n,300000"]), "bad.csv"
    )
    final = local.wait_upload("Chicago_IL", key)
    assert final["status"] == "REJECTED"
    assert "SQUARE_FEET is not a number: 'big'" in final["reason"]
    reports = local.client("s3").list_objects_v2(Bucket=local.bucket, Prefix="reports/Chicago_IL/")
    report_keys = [o["Key"] for o in reports.get("Contents", [])]
    assert any(k.endswith("validation.json") for k in report_keys)
    body = local.client("s3").get_object(Bucket=local.bucket, Key=report_keys[0])["Body"].read()
    assert json.loads(body)["row_problems"][0]["line"] == 61
    assert len(sagemaker.list_processing_jobs(MaxResults=100)["ProcessingJobSummaries"]) == before


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli_main(argv)
    out = capsys.readouterr().out
    # what the in-process functions print (EMF metrics) is not the CLI's
    return code, "\n".join(line for line in out.splitlines() if not line.startswith('{"_aws"'))


def test_every_rejected_upload_is_in_status_with_its_report_one_command_away(
    local: Running, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN uploads the stack rejects: keys naming no valid city, and a city's bad rows
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(local.outputs))
    s3 = local.client("s3")
    for key in ("raw/New York/houses.csv", "raw/houses.csv", "raw/Austin_TX/houses.txt"):
        s3.put_object(Bucket=local.bucket, Key=key, Body=upload(raw_rows(60)))
    bad = [*raw_rows(200), *[f"1990,big{i},3,2,1,1,y,n,300000" for i in range(150)]]
    final = local.wait_upload("Seattle_WA", local.upload("Seattle_WA", upload(bad), "bad.csv"))
    assert final["status"] == "REJECTED"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        code, out = _cli(["status", "--outputs", str(outputs), "--json"], capsys)
        rejected = json.loads(out)["rejected_keys"]
        if rejected["count"] >= 3:
            break
        time.sleep(0.2)
    # WHEN the operator looks at the stack's status THEN each is there, with its reason
    assert {"raw/New York/houses.csv", "raw/houses.csv", "raw/Austin_TX/houses.txt"} <= {
        item["key"] for item in rejected["peek"]
    }
    code, out = _cli(["status", "--outputs", str(outputs)], capsys)
    assert code == 0 and "rejected before reaching a city" in out
    # AND the full report is one command away, the one status prints
    (command,) = [line for line in out.splitlines() if line.startswith("full report: ")]
    argv = command.removeprefix("full report: citymodels ").split()
    code, out = _cli(argv, capsys)
    assert code == 0 and "upload: raw/" in out
    # AND a city's rejection names its report, which lists the first 100 bad rows of 150
    code, out = _cli(["status", "Seattle_WA", "--outputs", str(outputs)], capsys)
    (command,) = [line for line in out.splitlines() if line.startswith("full report of")]
    argv = command.split("citymodels ", 1)[1].split()
    code, out = _cli([*argv, "--json"], capsys)
    report = json.loads(out)
    assert len(report["row_problems"]) == 100 and report["row_problems_not_listed"] == 50


def test_a_new_city_goes_live_without_a_restart(
    local: Running, new_york: dict[str, object]
) -> None:
    city, data, _ = city_csv(3)  # Houston_TX
    status, _ = local.api("POST", f"cities/{city}/predictions", {"instances": [HOUSE]})
    assert status == 404
    key = local.upload(city, data)
    assert local.wait_upload(city, key)["status"] == "PUBLISHED"
    status, body = local.api("POST", f"cities/{city}/predictions", {"instances": [HOUSE]})
    assert status == 200, body
    # the notebook's point: the same house costs more in New York than in Houston
    _, ny = local.api("POST", "cities/NewYork_NY/predictions", {"instances": [HOUSE]})
    assert ny["predictions"][0]["price"] > body["predictions"][0]["price"]


def test_the_same_upload_twice_starts_one_job(local: Running) -> None:
    city, data, _ = city_csv(4)  # Dallas_TX
    sagemaker = local.client("sagemaker")
    before = {
        j["ProcessingJobName"]
        for j in sagemaker.list_processing_jobs(MaxResults=100)["ProcessingJobSummaries"]
    }
    first = local.upload(city, data, "a.csv")
    assert local.wait_upload(city, first)["status"] == "PUBLISHED"
    second = local.upload(city, data, "b.csv")
    duplicate = local.wait_upload(city, second)
    assert duplicate["status"] == "DUPLICATE"
    after = {
        j["ProcessingJobName"]
        for j in sagemaker.list_processing_jobs(MaxResults=100)["ProcessingJobSummaries"]
    }
    assert len(after - before) == 1


def test_rollback_then_a_newer_upload_publishes(local: Running) -> None:
    city, data, _ = city_csv(5)  # Phoenix_AZ
    first = local.upload(city, data, "v1.csv")
    assert local.wait_upload(city, first)["status"] == "PUBLISHED"
    v1 = local.city(city)["current_version"]
    # a fresh, larger snapshot: the quality gate compares it with v1 on its own test
    # rows, and three times the data makes it reliably at least as good
    _, data2, _ = city_csv(5, rows=3000, seed=8)
    second = local.upload(city, data2, "v2.csv")
    assert local.wait_upload(city, second)["status"] == "PUBLISHED"
    v2 = local.city(city)["current_version"]
    assert v2 > v1
    status, body = local.api("POST", f"cities/{city}/rollback", {"version": v1})
    assert status == 200, body
    # the rollback is a cut-over at the instant it names (AliasCacheSeconds ahead)
    assert body["answering_version"] == v2 and body["cutover_at"]
    cutover = datetime.fromisoformat(body["cutover_at"].replace("Z", "+00:00"))
    time.sleep(max(0.0, (cutover - datetime.now(UTC)).total_seconds()))
    _, answer = local.api("POST", f"cities/{city}/predictions", {"instances": [HOUSE]})
    assert answer["model_version"] == v1


def test_a_key_is_denied_another_city(
    local: Running, new_york: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(local.outputs))
    assert (
        cli_main(["keys", "create", "--outputs", str(outputs), "--json", "--cities", "NewYork_NY"])
        == 0
    )
    secret = json.loads(capsys.readouterr().out)["secret"]
    assert (
        local.api("POST", "cities/NewYork_NY/predictions", {"instances": [HOUSE]}, key=secret)[0]
        == 200
    )
    status, body = local.api(
        "POST", "cities/Chicago_IL/predictions", {"instances": [HOUSE]}, key=secret
    )
    # API Gateway's own answers are the template's gateway responses, as on AWS
    responses = load_yaml(REPO_ROOT / "template.yaml")["Resources"]["RestApi"]["Properties"][
        "GatewayResponses"
    ]
    denied = json.loads(responses["ACCESS_DENIED"]["ResponseTemplates"]["application/json"])
    assert (status, body) == (403, denied)
    # and the cached policy (by key) is right for other paths too
    assert local.api("GET", "cities/Chicago_IL", key=secret) == (403, denied)
    assert local.api("POST", "cities/NewYork_NY/rollback", {"version": "x"}, key=secret)[0] == 403
    unauthorized = json.loads(responses["UNAUTHORIZED"]["ResponseTemplates"]["application/json"])
    assert local.api("GET", "cities", key="") == (401, unauthorized)
    assert local.api("GET", "cities", key="cmk_unknown") == (401, unauthorized)


def _copy_model(local: Running, source_city: str, target: str) -> str:
    s3 = local.client("s3")
    version = local.city(source_city)["current_version"]
    s3.copy_object(
        Bucket=local.bucket,
        CopySource={"Bucket": local.bucket, "Key": f"mme/{source_city}/{version}.tar.gz"},
        Key=f"mme/{target}",
    )
    return target


def _invoke(local: Running, target: str) -> dict[str, object]:
    runtime = local.client("sagemaker-runtime")
    answer = runtime.invoke_endpoint(
        EndpointName=local.outputs["EndpointName"],
        TargetModel=target,
        ContentType="text/csv",
        Body=b"1995,2500,3,2.5,1.0,2,y,n\n",
    )
    return dict(json.loads(answer["Body"].read()))


def _metric(local: Running, namespace: str, name: str, statistic: str, since: datetime) -> float:
    time.sleep(2.5)  # the local endpoint publishes every second
    answer = local.client("cloudwatch").get_metric_statistics(
        Namespace=namespace,
        MetricName=name,
        Dimensions=[
            {"Name": "EndpointName", "Value": local.outputs["EndpointName"]},
            {"Name": "VariantName", "Value": "AllTraffic"},
        ],
        StartTime=since,
        EndTime=datetime.now(UTC) + timedelta(minutes=1),
        Period=3600,
        Statistics=[statistic],
    )
    points = answer["Datapoints"]
    return (
        float(sum(p[statistic] for p in points))
        if statistic != "Maximum"
        else float(max((p[statistic] for p in points), default=0))
    )


def test_eviction_under_a_small_memory_bound_and_reload(
    local: Running, new_york: dict[str, object]
) -> None:
    from tests.integration.conftest import MME_MAX_MODELS

    since = datetime.now(UTC) - timedelta(seconds=1)
    targets = [
        _copy_model(local, "NewYork_NY", f"Copies/{i}.tar.gz") for i in range(MME_MAX_MODELS + 4)
    ]
    for target in targets:
        assert _invoke(local, target)["predictions"]
    # the first copies were evicted to stay within the bound, yet still answer (reloaded)
    assert _invoke(local, targets[0])["predictions"]
    assert (
        _metric(local, "/aws/sagemaker/Endpoints", "LoadedModelCount", "Maximum", since)
        <= MME_MAX_MODELS
    )
    assert _metric(local, "AWS/SageMaker", "ModelUnloadingTime", "SampleCount", since) >= 4


def test_concurrent_first_requests_load_a_model_once(
    local: Running, new_york: dict[str, object]
) -> None:
    target = _copy_model(local, "NewYork_NY", "Concurrent/one.tar.gz")
    # Loads before this test (the fixture's quality gate, when this test runs first) are
    # counted once they are published, so only the difference is this test's.
    since = datetime.now(UTC) - timedelta(minutes=5)
    before = _metric(local, "AWS/SageMaker", "ModelLoadingTime", "SampleCount", since)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: _invoke(local, target), range(16)))
    assert all(a["predictions"] for a in answers)
    after = _metric(local, "AWS/SageMaker", "ModelLoadingTime", "SampleCount", since)
    assert after - before == 1


def test_unknown_target_model_is_the_documented_error(local: Running) -> None:
    with pytest.raises(ClientError) as err:
        _invoke(local, "Nowhere/20260101T000000000Z-00000000000000000000000000000000.tar.gz")
    assert err.value.response["Error"]["Code"] == "ValidationError"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
