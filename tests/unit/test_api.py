"""The HTTP API: the predict handler on real-shaped API Gateway events, with the registry
in moto and a fake sagemaker-runtime client; and the domain code it calls (citymodels.api)."""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import random
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from jsonschema import Draft202012Validator
from moto import mock_aws
from openapi_spec_validator import validate as validate_openapi

from citymodels import api
from citymodels.auth import city_allowed
from citymodels.endpoint import EndpointClient
from citymodels.registry import (
    CUTOVER_MARGIN_SECONDS,
    FAILED,
    PUBLISHED,
    REJECTED,
    City,
    Registry,
    Run,
    UnknownCity,
    epoch_iso,
)
from citymodels.schema import FEATURES, FIELD_RULES
from citymodels.versions import mint_version
from tests.aws import (
    ENDPOINT,
    REGION,
    TABLE,
    AwsError,
    FakeLambdaContext,
    StubbedRuntime,
    create_registry_table,
    load_event,
)

ROOT = Path(__file__).resolve().parents[2]
TTL = 5.0
DEADLINE = 2.0
V1 = mint_version("2026-11-25T01:00:00Z", "01")
V2 = mint_version("2026-11-25T02:00:00Z", "02")
V3 = mint_version("2026-11-25T03:00:00Z", "03")
HOUSE = {
    "YEAR_BUILT": 1995,
    "SQUARE_FEET": 2100.5,
    "NUM_BEDROOMS": 3,
    "NUM_BATHROOMS": 2.5,
    "LOT_ACRES": 0.8,
    "GARAGE_SPACES": 2,
    "FRONT_PORCH": "y",
    "DECK": "n",
}


# -- fixtures ------------------------------------------------------------------------


def load_function(name: str, env: dict[str, str]) -> ModuleType:
    """Import ``functions/{name}/app.py`` as Lambda would, with its environment set."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        spec = importlib.util.spec_from_file_location(
            f"{name}_app", ROOT / "functions" / name / "app.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module


@pytest.fixture(scope="module")
def predict_app() -> ModuleType:
    return load_function(
        "predict",
        {
            "REGISTRY_TABLE": TABLE,
            "ENDPOINT_NAME": ENDPOINT,
            "ALIAS_CACHE_SECONDS": str(TTL),
            "API_DEADLINE_SECONDS": str(DEADLINE),
            "AWS_DEFAULT_REGION": REGION,
            "POWERTOOLS_SERVICE_NAME": "citymodels-api",
            "POWERTOOLS_METRICS_NAMESPACE": "citymodels",
            "POWERTOOLS_TRACE_DISABLED": "true",
        },
    )


class FakeClock:
    """Monotonic time that only moves when told to (or when the code sleeps)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeRuntime(StubbedRuntime):
    """sagemaker-runtime's InvokeEndpoint: price = 100 x SQUARE_FEET, or scripted errors.

    A real client under botocore's Stubber (:class:`tests.aws.StubbedRuntime`): errors
    arrive as botocore raises them (the modelled exception, with the documented code and
    HTTP status), so the real :class:`EndpointClient` handles them.
    """

    def __init__(self) -> None:
        super().__init__(self._price)
        self.errors: list[AwsError] = []
        self.bodies: list[bytes] = []
        """Answer bodies to send as they are, before pricing again (a misbehaving model)."""

    @property
    def calls(self) -> list[dict[str, Any]]:
        """The InvokeEndpoint requests, in order."""
        return self.requests

    def fail(self, code: str, status: int, message: str, times: int = 1) -> None:
        self.errors.extend([AwsError(code, status, message)] * times)

    def _price(self, request: dict[str, Any]) -> bytes | AwsError:
        if self.errors:
            return self.errors.pop(0)
        if self.bodies:
            return self.bodies.pop(0)
        rows = request["Body"].decode("utf-8").splitlines()
        scores = [{"score": 100 * float(row.split(",")[1])} for row in rows]
        return json.dumps({"predictions": scores}).encode()


class CountingRegistry(Registry):
    """The moto registry, counting alias reads."""

    get_city_calls = 0

    def get_city(self, city: str) -> City:
        self.get_city_calls += 1
        return super().get_city(city)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def wall() -> FakeClock:
    """Epoch seconds (cut-over instants), moved by hand like ``clock``."""
    wall = FakeClock()
    wall.now = 1_796_000_000.0
    return wall


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture(scope="module")
def dynamodb() -> Iterator[Any]:
    """One mocked DynamoDB for the module (a fresh table per test): the full ``aws``
    fixture's S3, SQS and SageMaker clients are not needed here and cost ~0.7 s a test."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            patch.setenv(name, "testing")
        patch.setenv("AWS_DEFAULT_REGION", REGION)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
            patch.delenv(name, raising=False)
        with mock_aws():
            yield boto3.client("dynamodb", region_name=REGION)


@pytest.fixture
def registry(dynamodb: Any, wall: FakeClock) -> Iterator[CountingRegistry]:
    create_registry_table(dynamodb)
    yield CountingRegistry(TABLE, client=dynamodb, clock=wall)
    dynamodb.delete_table(TableName=TABLE)


@pytest.fixture
def service(
    predict_app: ModuleType,
    registry: CountingRegistry,
    runtime: FakeRuntime,
    clock: FakeClock,
    wall: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> api.CityApi:
    endpoint = EndpointClient(ENDPOINT, client=runtime.client, sleep=clock.sleep, clock=clock)
    service = api.CityApi(
        lambda: registry,
        lambda: endpoint,
        alias_cache_seconds=TTL,
        deadline_seconds=DEADLINE,
        clock=clock,
        wall_clock=wall,
    )
    monkeypatch.setattr(predict_app, "service", service)
    return service


def published(registry: Registry, city: str, version: str, mae: float = 1000.0) -> None:
    """Record an upload of ``city`` whose model was published as ``version``."""
    run = Run(city=city, run=version, key=f"raw/{city}/{version}.csv", status=PUBLISHED)
    assert registry.create_run(run)
    registry.update_run(city, version, metrics={"test:mae": mae})
    assert registry.publish(
        city, version, metrics={"test:mae": mae}, model_key=f"mme/{city}/{version}.tar.gz"
    )


def uploaded(registry: Registry, city: str, version: str, status: str, reason: str = "") -> None:
    """Record an upload of ``city`` that never produced a model."""
    run = Run(city=city, run=version, key=f"raw/{city}/{version}.csv", status=status, reason=reason)
    assert registry.create_run(run)


def event_for(
    name: str,
    *,
    city: str | None = None,
    body: str | None = None,
    content_type: str | None = None,
    cities: str | None = None,
    admin: bool | None = None,
) -> dict[str, Any]:
    """A sample event, changed where a test needs it (path, body, the key's grants)."""
    event = copy.deepcopy(load_event(name))
    if city is not None:
        old = event["pathParameters"]["city"]
        event["pathParameters"]["city"] = city
        event["path"] = event["path"].replace(f"/{old}", f"/{city}", 1)
        event["requestContext"]["path"] = event["requestContext"]["path"].replace(
            f"/{old}", f"/{city}", 1
        )
    if body is not None:
        event["body"] = body
    if content_type is not None:
        event["headers"]["Content-Type"] = content_type
        event["multiValueHeaders"]["Content-Type"] = [content_type]
    if cities is not None:
        event["requestContext"]["authorizer"]["cities"] = cities
    if admin is not None:
        event["requestContext"]["authorizer"]["admin"] = "true" if admin else "false"
    return event


def call(
    app: ModuleType, event: dict[str, Any], context: FakeLambdaContext
) -> tuple[int, Any, dict[str, str]]:
    answer = app.lambda_handler(event, context)
    content_type = answer["multiValueHeaders"].get("Content-Type", [""])[0]
    body = json.loads(answer["body"]) if content_type == "application/json" else answer["body"]
    headers = {k: v[0] for k, v in answer["multiValueHeaders"].items()}
    return answer["statusCode"], body, headers


def predict_body(*houses: dict[str, Any]) -> str:
    return json.dumps({"instances": list(houses)})


# -- predictions ---------------------------------------------------------------------


def test_json_prediction_returns_one_price_per_row_and_the_model_version(
    predict_app: ModuleType,
    service: api.CityApi,
    registry: CountingRegistry,
    runtime: FakeRuntime,
    lambda_context: FakeLambdaContext,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN NewYork_NY serving version 1
    published(registry, "NewYork_NY", V1)
    # WHEN the sample JSON request (two houses) comes in
    status, body, _ = call(predict_app, load_event("api_predict"), lambda_context)
    # THEN each house is priced, in order, by NewYork_NY's version 1
    assert status == 200
    assert body == {
        "city": "NewYork_NY",
        "model_version": V1,
        "predictions": [{"price": 210050.0}, {"price": 340000.0}],
    }
    # AND the endpoint got the canonical CSV rows for that TargetModel
    [invocation] = runtime.calls
    assert invocation["TargetModel"] == f"NewYork_NY/{V1}.tar.gz"
    assert invocation["ContentType"] == "text/csv"
    assert invocation["Body"] == b"1995,2100.5,3,2.5,0.8,2,y,n\n2012,3400,4,3,1.25,3,n,y\n"
    # AND the rows priced and the latency are published as metrics, without a city dimension
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    [metric_set] = emf
    assert metric_set["Predictions"] == [2.0]
    assert metric_set["PredictionLatency"][0] >= 0
    assert "city" not in metric_set["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]


def test_csv_prediction_gives_the_same_prices(
    predict_app: ModuleType,
    service: api.CityApi,
    registry: CountingRegistry,
    runtime: FakeRuntime,
    lambda_context: FakeLambdaContext,
) -> None:
    published(registry, "NewYork_NY", V1)
    status, body, _ = call(predict_app, load_event("api_predict_csv"), lambda_context)
    assert status == 200
    assert body["model_version"] == V1
    assert body["predictions"] == [{"price": 210050.0}, {"price": 340000.0}]


def test_csv_with_a_header_in_any_order_and_odd_spelling_is_canonicalised(
    predict_app: ModuleType,
    service: api.CityApi,
    registry: CountingRegistry,
    runtime: FakeRuntime,
    lambda_context: FakeLambdaContext,
) -> None:
    published(registry, "NewYork_NY", V1)
    csv_body = (
        "\ufeffdeck,FRONT_PORCH,year_built,SQUARE_FEET,NUM_BEDROOMS,NUM_BATHROOMS,LOT_ACRES,GARAGE_SPACES\r\n"
        '" N ",Y,1995.0,2100.50,3,2.5,0.8,2\r\n'
        "\r\n"
    )
    event = event_for("api_predict_csv", body=csv_body, content_type="text/csv; charset=utf-8")
    status, body, _ = call(predict_app, event, lambda_context)
    assert status == 200, body
    assert runtime.calls[0]["Body"] == b"1995,2100.5,3,2.5,0.8,2,y,n\n"


def test_a_city_outside_the_keys_patterns_is_403_and_reaches_no_model(
    predict_app: ModuleType,
    service: api.CityApi,
    registry: CountingRegistry,
    runtime: FakeRuntime,
    lambda_context: FakeLambdaContext,
) -> None:
    # GIVEN Chicago serving a model, and a key for NewYork_NY and San*
    published(registry, "Chicago_IL", V1)
    # WHEN the key asks Chicago for prices or for its details
    predict = event_for("api_predict", city="Chicago_IL", cities="NewYork_NY,San*")
    details = event_for("api_get_city", city="Chicago_IL", cities="NewYork_NY,San*")
    for event in (predict, details):
        status, body, _ = call(predict_app, event, lambda_context)
        # THEN 403, naming the city; the model and the registry are never asked
        assert (status, body["code"], body["field"]) == (403, "forbidden", "city")
        assert "Chicago_IL" in body["message"]
    assert runtime.calls == []
    assert registry.get_city_calls == 0


def test_a_request_without_authorizer_context_fails_closed(
    predict_app: ModuleType,
    service: api.CityApi,
    registry: CountingRegistry,
    runtime: FakeRuntime,
    lambda_context: FakeLambdaContext,
) -> None:
    # GIVEN a route wrongly deployed without the authorizer (no requestContext.authorizer)
    published(registry, "NewYork_NY", V1)
    event = load_event("api_predict")
    del event["requestContext"]["authorizer"]
    status, _, _ = call(predict_app, event, lambda_context)
    assert status == 403
    status, body, _ = call(
        predict_app, load_event("api_get_cities") | {"requestContext": {}}, lambda_context
    )
    assert (status, body) == (200, {"cities": [], "next": None})
    assert runtime.calls == []


def test_unknown_city_and_city_without_a_model_are_404_saying_which(
    predict_app: ModuleType,
    service: api.CityApi,
    registry: CountingRegistry,
    runtime: FakeRuntime,
    lambda_context: FakeLambdaContext,
) -> None:
    # GIVEN SanJose_CA with only a rejected upload, and SanDiego_CA never uploaded
    uploaded(registry, "SanJose_CA", V1, REJECTED, "row 3: SQUARE_FEET is not a number")
    # WHEN prices are asked of both
    status, body, _ = call(
        predict_app, event_for("api_predict", city="SanDiego_CA"), lambda_context
    )
    assert (status, body["code"]) == (404, "unknown_city")
    assert "nothing was ever uploaded" in body["message"]
    status, body, _ = call(predict_app, event_for("api_predict", city="SanJose_CA"), lambda_context)
    assert (status, body["code"]) == (404, "no_model")
    # it says what may be going on and where to look, in the operator's terms
    assert "may still be processing or training" in body["message"]
    assert "citymodels status SanJose_CA" in body["message"]
    assert runtime.calls == []
    # AND the city's details still list the rejected upload and why
    status, body, _ = call(
        predict_app, event_for("api_get_city", city="SanJose_CA"), lambda_context
    )
    assert status == 200
    assert body["current_version"] is None and body["versions"] == []
    [upload] = body["uploads"]
    assert upload["status"] == REJECTED
    assert upload["reason"] == "row 3: SQUARE_FEET is not a number"
    assert upload["key"] == f"raw/SanJose_CA/{V1}.csv"
    status, body, _ = call(
        predict_app, event_for("api_get_city", city="SanDiego_CA"), lambda_context
    )
    assert (status, body["code"]) == (404, "unknown_city")


def _many(n: int) -> str:
    return predict_body(*[HOUSE] * n)


BAD_REQUESTS = [
    # (id, body, content type, city, status, field, words in the message)
    ("wrong type", predict_body(HOUSE | {"SQUARE_FEET": "big"}), None, None, 400,
     "instances[0].SQUARE_FEET", "not a number"),
    ("boolean year", predict_body(HOUSE | {"YEAR_BUILT": True}), None, None, 400,
     "instances[0].YEAR_BUILT", "must be a number"),
    ("nested value", predict_body(HOUSE | {"LOT_ACRES": {"v": 1}}), None, None, 400,
     "instances[0].LOT_ACRES", "must be a number"),
    ("missing field", predict_body({k: v for k, v in HOUSE.items() if k != "DECK"}), None, None,
     400, "instances[0].DECK", "missing"),
    ("unknown field", predict_body(HOUSE | {"GARDEN": "y"}), None, None, 400,
     "instances[0].GARDEN", "unknown field"),
    ("flag not y/n", predict_body(HOUSE | {"FRONT_PORCH": "yes"}), None, None, 400,
     "instances[0].FRONT_PORCH", "'y' or 'n'"),
    ("negative area in row 2", predict_body(HOUSE, HOUSE | {"LOT_ACRES": -1}), None, None, 400,
     "instances[1].LOT_ACRES", "from 0 to"),
    ("fractional year", predict_body(HOUSE | {"YEAR_BUILT": 1995.5}), None, None, 400,
     "instances[0].YEAR_BUILT", "whole number"),
    ("NaN constant", predict_body(HOUSE).replace("2100.5", "NaN"), None, None, 400,
     "instances[0].SQUARE_FEET", "finite"),
    ("Infinity constant", predict_body(HOUSE).replace("0.8", "-Infinity"), None, None, 400,
     "instances[0].LOT_ACRES", "finite"),
    ("4,000-digit number", predict_body(HOUSE).replace("2100.5", "9" * 4000), None, None, 400,
     "instances[0].SQUARE_FEET", "at most 1000000, got 999"),
    ("5,000-digit number", predict_body(HOUSE).replace("2100.5", "-" + "9" * 5000), None, None,
     400, "instances[0].SQUARE_FEET", "finite"),
    ("deeply nested value", predict_body(HOUSE).replace("0.8", "[" * 100_000 + "]" * 100_000),
     None, None, 400, "body", "too deeply"),
    ("names differing only in case", predict_body(HOUSE | {"deck": "y"}), None, None, 400,
     "instances[0].DECK", "given twice, as 'DECK' and 'deck'"),
    ("a name given twice", predict_body(HOUSE)[:-1] + ', "instances": []}', None, None, 400,
     "instances", "appears twice"),
    ("a 6 MB value", predict_body(HOUSE | {"DECK": "y" * 6_000_000}), None, None, 400,
     "instances[0].DECK", "'y' or 'n', got 'yyy"),
    ("1001 rows", _many(1001), None, None, 413, "instances", "at most 1,000"),
    # several mistakes: the first one met reading the body, whatever order the model finds them
    ("1001 rows, the first one bad", predict_body(HOUSE | {"DECK": "x"}, *[HOUSE] * 1000), None,
     None, 413, "instances", "at most 1,000"),
    ("unknown top-level field and a bad row", json.dumps({"instances": [HOUSE | {"DECK": "x"}],
     "zz": 1, "city": "x"}), None, None, 400, "city", "unknown field"),
    ("bad rows 2 and 3", predict_body(HOUSE, HOUSE | {"DECK": "x"}, HOUSE | {"YEAR_BUILT": 1}),
     None, None, 400, "instances[1].DECK", "'y' or 'n'"),
    ("a bad flag sent before a bad number", predict_body({"DECK": "x"} | HOUSE | {"DECK": "x",
     "GARAGE_SPACES": -1}), None, None, 400, "instances[0].GARAGE_SPACES", "from 0 to 1000"),
    ("an unknown name and a missing one", predict_body({k: v for k, v in HOUSE.items()
     if k != "DECK"} | {"GARDEN": "y"}), None, None, 400, "instances[0].GARDEN", "unknown field"),
    ("over 6 MB", predict_body(HOUSE)[:-1] + " " * (6 * 1024 * 1024) + "}", None, None, 413,
     "body", "at most 6,291,456"),
    ("wrong content type", predict_body(HOUSE), "text/plain", None, 415, "Content-Type",
     "not supported"),
    ("form content type (curl -d)", predict_body(HOUSE), "application/x-www-form-urlencoded",
     None, 415, "Content-Type", "application/json"),
    ("invalid JSON", '{"instances": [', None, None, 400, "body", "not valid JSON"),
    ("empty body", "", None, None, 400, "body", "empty"),
    ("top-level list", json.dumps([HOUSE]), None, None, 400, "body", "not a list"),
    ("unknown top-level field", json.dumps({"instances": [HOUSE], "city": "x"}), None, None,
     400, "city", "unknown field"),
    ("instances not a list", json.dumps({"instances": HOUSE}), None, None, 400, "instances",
     "must be a list"),
    ("empty instances", predict_body(), None, None, 400, "instances", "empty"),
    ("non-object instance", predict_body([1995, 2100, 3, 2, 1, 1, "y", "n"]), None, None,  # type: ignore[arg-type]
     400, "instances[0]", "not a list"),
    ("null instance", json.dumps({"instances": [None]}), None, None, 400, "instances[0]",
     "not null"),
    ("invalid city id in path", predict_body(HOUSE), None, "9Lives", 400, "city",
     "must start with a letter"),
    ("CSV with PRICE", "1995,2100,3,2,1,1,y,n,500000\n", "text/csv", None, 400, "rows[0]",
     "expected 8 values"),
    ("CSV bad value on line 2", "1995,2100,3,2,1,1,y,n\n1995,abc,3,2,1,1,y,n\n", "text/csv",
     None, 400, "rows[1].SQUARE_FEET", "line 2"),
    ("CSV unknown header", "YEAR_BUILT,SQFT\n1995,2100\n", "text/csv", None, 400, "header",
     "SQFT"),
    ("CSV unbalanced quote", '1995,"2100,3,2,1,1,y,n\n', "text/csv", None, 400, "body",
     "cannot be read"),
    ("CSV 1001 rows", "1995,2100,3,2,1,1,y,n\n" * 1001, "text/csv", None, 413, "body",
     "at most 1,000"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "content_type", "city", "status", "field", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS],
)
def test_bad_requests_are_4xx_naming_the_field_and_reach_no_model(
    predict_app: ModuleType,
    service: api.CityApi,
    registry: CountingRegistry,
    runtime: FakeRuntime,
    lambda_context: FakeLambdaContext,
    body: str,
    content_type: str | None,
    city: str | None,
    status: int,
    field: str,
    words: str,
) -> None:
    # GIVEN NewYork_NY serving a model
    published(registry, "NewYork_NY", V1)
    # WHEN a malformed request comes in
    event = event_for(
        "api_predict", body=body, content_type=content_type, city=city or "NewYork_NY"
    )
    got_status, answer, _ = call(predict_app, event, lambda_context)
    # THEN a 4xx JSON error names the field and says what is wrong; no model is called
    assert (got_status, answer["field"]) == (status, field), answer
    assert words in answer["message"], answer
    assert set(answer) == {"code", "message", "field"}
    assert runtime.calls == []


def test_base64_bodies_are_decoded_and_bad_base64_is_400(
    predict_app: ModuleType,
    service: api.CityApi,
    registry: CountingRegistry,
    runtime: FakeRuntime,
    lambda_context: FakeLambdaContext,
) -> None:
    published(registry, "NewYork_NY", V1)
    event = load_event("api_predict_csv")
    event["body"] = base64.b64encode(event["body"].encode()).decode()
    event["isBase64Encoded"] = True
    status, body, _ = call(predict_app, event, lambda_context)
    assert (status, len(body["predictions"])) == (200, 2)
    event["body"] = "not base64!"
    status, body, _ = call(predict_app, event, lambda_context)
    assert (status, body["field"]) == (400, "body")


def test_a_loading_model_is_retried_then_answers(
    predict_app: ModuleType,
    service: api.CityApi,
    registry: CountingRegistry,
    runtime: FakeRuntime,
    lambda_context: FakeLambdaContext,
) -> None:
    published(registry, "NewYork_NY", V1)
    runtime.fail("ModelNotReadyException", 429, "Model is not yet loaded", times=2)
    status, body, _ = call(predict_app, load_event("api_predict"), lambda_context)
    assert status == 200 and len(body["predictions"]) == 2
    assert len(runtime.calls) == 3


def test_a_model_still_loading_at_the_deadline_is_503_with_retry_after(
    predict_app: ModuleType,
    service: api.CityApi,
    registry: CountingRegistry,
    runtime: FakeRuntime,
    clock: FakeClock,
    lambda_context: FakeLambdaContext,
) -> None:
    # GIVEN a model that keeps loading
    published(registry, "NewYork_NY", V1)
    runtime.fail("ModelNotReadyException", 429, "Model is not yet loaded", times=1000)
    start = clock.now
    # WHEN prices are asked
    status, body, headers = call(predict_app, load_event("api_predict"), lambda_context)
    # THEN it was retried with backoff within API_DEADLINE_SECONDS, then 503 + Retry-After
    assert (status, body["code"]) == (503, "model_not_ready")
    assert headers["Retry-After"] == str(api.RETRY_AFTER_SECONDS)
    assert 3 <= len(runtime.calls) < 20
    assert clock.now - start <= DEADLINE


def test_a_failing_model_is_424_and_a_missing_one_502(
    predict_app: ModuleType,
    service: api.CityApi,
    registry: CountingRegistry,
    runtime: FakeRuntime,
    lambda_context: FakeLambdaContext,
) -> None:
    published(registry, "NewYork_NY", V1)
    runtime.fail("ModelError", 424, "Received server error (500) from primary: boom")
    status, body, _ = call(predict_app, load_event("api_predict"), lambda_context)
    assert (status, body["code"]) == (424, "model_error")
    assert "boom" in body["message"]
    runtime.fail("ValidationError", 400, "Failed to download model data for target model")
    status, body, _ = call(predict_app, load_event("api_predict"), lambda_context)
    assert (status, body["code"]) == (502, "model_missing")


def test_a_model_answering_the_wrong_count_or_a_non_finite_price_is_424_not_a_price(
    predict_app: ModuleType,
    service: api.CityApi,
    registry: CountingRegistry,
    runtime: FakeRuntime,
    lambda_context: FakeLambdaContext,
) -> None:
    # GIVEN a city serving a model, asked to price the sample's two houses
    published(registry, "NewYork_NY", V1)
    wrong = {
        "one price for two rows": [{"score": 1.0}],
        "three prices for two rows": [{"score": 1.0}] * 3,
        "NaN": [{"score": 1.0}, {"score": float("nan")}],
        "Infinity": [{"score": float("inf")}, {"score": 1.0}],
    }
    for name, predictions in wrong.items():
        # WHEN the model answers what no caller could use (JSON allows NaN and Infinity)
        runtime.bodies.append(json.dumps({"predictions": predictions}).encode())
        status, body, _ = call(predict_app, load_event("api_predict"), lambda_context)
        # THEN the caller gets the model's failure, never a price list that does not
        # line up with the houses sent or holds a non-number
        assert (status, body["code"]) == (424, "model_error"), name
        assert "for 2 rows" in body["message"], name
    # AND a sound answer prices the houses again
    status, body, _ = call(predict_app, load_event("api_predict"), lambda_context)
    assert status == 200 and len(body["predictions"]) == 2


def test_an_unexpected_failure_is_a_json_500_with_the_request_id(
    predict_app: ModuleType,
    service: api.CityApi,
    registry: CountingRegistry,
    runtime: FakeRuntime,
    lambda_context: FakeLambdaContext,
) -> None:
    published(registry, "NewYork_NY", V1)
    runtime.fail("InternalFailure", 500, "An internal failure occurred")
    status, body, _ = call(predict_app, load_event("api_predict"), lambda_context)
    assert (status, body["code"]) == (500, "internal_error")
    assert lambda_context.aws_request_id in body["message"]
    assert "InternalFailure" not in body["message"]


# -- the alias cache -----------------------------------------------------------------


def test_alias_is_read_once_within_the_ttl_and_a_rollback_is_seen_after_it(
    predict_app: ModuleType,
    service: api.CityApi,
    registry: CountingRegistry,
    runtime: FakeRuntime,
    clock: FakeClock,
    wall: FakeClock,
    lambda_context: FakeLambdaContext,
) -> None:
    # GIVEN versions 1 and 2 published (2 current)
    published(registry, "NewYork_NY", V1)
    published(registry, "NewYork_NY", V2)
    # WHEN three predictions come within the TTL
    versions = []
    for _ in range(3):
        versions.append(call(predict_app, load_event("api_predict"), lambda_context)[1])
        clock.now += 1
    # THEN the registry was read once
    assert [b["model_version"] for b in versions] == [V2, V2, V2]
    assert registry.get_city_calls == 1
    # WHEN another function instance rolls back to version 1
    registry.rollback("NewYork_NY", V1, cutover_seconds=TTL + CUTOVER_MARGIN_SECONDS)
    # THEN this one still serves 2 until its cache expires
    assert call(predict_app, load_event("api_predict"), lambda_context)[1]["model_version"] == V2
    clock.now += TTL
    wall.now += TTL
    # ... and, knowing the rollback, until the cut-over instant; then 1
    assert call(predict_app, load_event("api_predict"), lambda_context)[1]["model_version"] == V2
    assert registry.get_city_calls == 2
    wall.now += CUTOVER_MARGIN_SECONDS
    assert call(predict_app, load_event("api_predict"), lambda_context)[1]["model_version"] == V1
    assert registry.get_city_calls == 2
    assert runtime.calls[-1]["TargetModel"] == f"NewYork_NY/{V1}.tar.gz"


def test_alias_cache_never_hides_a_city_that_just_went_live(registry: CountingRegistry) -> None:
    # GIVEN a request for a city nothing was uploaded for yet
    clock = FakeClock()
    cache = api.AliasCache(registry, ttl_seconds=10, clock=clock, max_entries=2)
    with pytest.raises(UnknownCity):
        cache.serving_version("Houston_TX")
    # WHEN its first model is published a moment later
    published(registry, "Houston_TX", V1)
    # THEN the next request is answered by it, not by a cached "unknown"
    assert cache.serving_version("Houston_TX") == V1
    calls = registry.get_city_calls
    assert cache.serving_version("Houston_TX") == V1  # a serving city is cached
    assert registry.get_city_calls == calls


def test_alias_cache_stays_bounded(registry: CountingRegistry) -> None:
    clock = FakeClock()
    cache = api.AliasCache(registry, ttl_seconds=10, clock=clock, max_entries=2)
    for city in ("A", "B", "C"):
        published(registry, city, V1)
    cache.get("A")
    cache.get("B")
    cache.get("C")  # evicts A
    calls = registry.get_city_calls
    cache.get("A")  # read again
    assert registry.get_city_calls == calls + 1
    uncached = api.AliasCache(registry, ttl_seconds=0, clock=clock)
    uncached.get("A")
    uncached.get("A")
    assert registry.get_city_calls == calls + 3
    with pytest.raises(ValueError, match="ttl_seconds"):
        api.AliasCache(registry, ttl_seconds=-1)


def test_no_environment_answers_an_older_version_once_a_newer_one_answered(
    registry: CountingRegistry, wall: FakeClock
) -> None:
    """Publishes and a rollback while five environments, each with its own cache read at
    its own moments, answer in turn: what any of them answers never goes back to a
    version older than one already answered (the rollback's own cut-over aside)."""
    rng = random.Random(7)
    ttl = 5.0
    lead = ttl + CUTOVER_MARGIN_SECONDS
    caches = [
        api.AliasCache(registry, ttl_seconds=ttl, clock=wall, wall_clock=wall) for _ in range(5)
    ]
    versions = [mint_version(f"2026-11-25T{h:02d}:00:00Z", f"{h:02d}") for h in range(1, 9)]
    published(registry, "NewYork_NY", versions[0])
    newest_answered = versions[0]
    moves = 0
    publish_steps = {100, 110, 120, 130, 700, 1200, 2000}
    for step in range(3000):
        wall.now += rng.uniform(0.0, 0.4)
        if step in publish_steps:  # some closer together than a cut-over's lead
            moves += 1
            run = Run(city="NewYork_NY", run=versions[moves], key="raw/x.csv", status=PUBLISHED)
            registry.create_run(run)
            assert registry.publish(
                "NewYork_NY", versions[moves], metrics={}, model_key="m",
                cutover_seconds=lead, sleep=wall.sleep,
            )  # fmt: skip
        answer = rng.choice(caches).serving_version("NewYork_NY")
        assert answer >= newest_answered, f"step {step}: {answer} after {newest_answered}"
        newest_answered = answer
    assert newest_answered == versions[moves] and moves == len(versions) - 1
    # a rollback cuts over the same way: from its instant, never the newer one again
    registry.rollback("NewYork_NY", versions[2], cutover_seconds=lead, sleep=wall.sleep)
    rolled_back = False
    for _ in range(500):
        wall.now += rng.uniform(0.0, 0.4)
        answer = rng.choice(caches).serving_version("NewYork_NY")
        assert not (rolled_back and answer != versions[2])
        rolled_back = answer == versions[2]
    assert rolled_back


def test_a_move_waits_for_a_pending_cut_over(registry: CountingRegistry, wall: FakeClock) -> None:
    published(registry, "NewYork_NY", V1)
    for version in (V2, V3):
        registry.create_run(Run(city="NewYork_NY", run=version, key="k", status=PUBLISHED))
    start = wall.now
    assert registry.publish("NewYork_NY", V2, metrics={}, model_key="m", cutover_seconds=6)
    # V3 right after: it waits for V2's instant, else V2 might never answer anywhere
    # while V1-holding caches are still answering
    assert registry.publish(
        "NewYork_NY", V3, metrics={}, model_key="m", cutover_seconds=6, sleep=wall.sleep
    )
    city = registry.get_city("NewYork_NY")
    assert wall.now >= start + 6
    assert (city.previous, city.current) == (V2, V3)
    assert city.cutover_at == epoch_iso(wall.now + 6)


# -- listing and details -------------------------------------------------------------


def test_cities_lists_only_what_the_key_may_see_with_version_and_metrics(
    predict_app: ModuleType,
    service: api.CityApi,
    registry: CountingRegistry,
    lambda_context: FakeLambdaContext,
) -> None:
    published(registry, "NewYork_NY", V1, mae=1234.5)
    published(registry, "Chicago_IL", V1)
    published(registry, "SanDiego_CA", V2)
    uploaded(registry, "SanJose_CA", V1, FAILED, "AlgorithmError")
    status, body, _ = call(predict_app, load_event("api_get_cities"), lambda_context)
    assert status == 200
    listed = {c["city"]: c for c in body["cities"]}
    assert sorted(listed) == ["NewYork_NY", "SanDiego_CA", "SanJose_CA"]
    assert listed["NewYork_NY"]["current_version"] == V1
    assert listed["NewYork_NY"]["metrics"] == {"test:mae": 1234.5}
    assert listed["SanJose_CA"]["current_version"] is None
    status, body, _ = call(predict_app, event_for("api_get_cities", cities="*"), lambda_context)
    assert len(body["cities"]) == 4 and body["next"] is None


def get_cities(predict_app: ModuleType, context: Any, query: dict[str, str], cities: str) -> Any:
    event = event_for("api_get_cities", cities=cities)
    event["queryStringParameters"] = query
    event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()}
    return call(predict_app, event, context)


def test_cities_come_a_page_at_a_time_in_id_order_whatever_the_key_grants(
    predict_app: ModuleType,
    service: api.CityApi,
    registry: CountingRegistry,
    dynamodb: Any,
    lambda_context: FakeLambdaContext,
) -> None:
    # GIVEN 30 cities, some sharing prefixes, and ids that sort close together
    names = sorted(
        [f"City{i:02d}" for i in range(20)]
        + ["San", "San-Jose", "San0", "SanDiego_CA", "SanJose_CA", "Sana", "Sb", "Sa", "S", "Z"]
    )
    for name in names:
        uploaded(registry, name, V1, FAILED, "x")
    queries: list[dict[str, Any]] = []

    def count(params: dict[str, Any], **_: Any) -> None:
        queries.append(params)

    dynamodb.meta.events.register("before-parameter-build.dynamodb.Query", count)
    for grants in ["*", "San*,City1*", "San*,San-Jose,Z,Nowhere", "City05"]:
        granted = [n for n in names if city_allowed(grants.split(","), n)]
        # WHEN the key pages through with limit 4
        seen, query = [], {"limit": "4"}
        while True:
            queries.clear()
            status, body, _ = get_cities(predict_app, lambda_context, query, grants)
            assert status == 200, body
            page = [c["city"] for c in body["cities"]]
            assert len(page) <= 4
            # each pattern reads its own key range, at most limit + 1 items: never a scan
            assert len(queries) <= len(grants.split(","))
            assert all(q["Limit"] == 5 for q in queries)
            seen += page
            if body["next"] is None:
                break
            assert len(page) == 4
            query = {"limit": "4", "next": body["next"]}
        # THEN it sees every city its patterns grant, once each, in id order
        assert seen == granted, grants
    dynamodb.meta.events.unregister("before-parameter-build.dynamodb.Query", count)


def test_a_bad_page_request_is_a_400_naming_the_parameter(
    predict_app: ModuleType, service: api.CityApi, lambda_context: FakeLambdaContext
) -> None:
    for query, field in [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"next": "%%%"}, "next"),
        ({"next": "9lives"}, "next"),
        ({"next": ""}, "next"),
        ({"limt": "5"}, "limt"),
    ]:
        status, body, _ = get_cities(predict_app, lambda_context, query, "*")
        assert (status, body["code"], body.get("field")) == (400, "bad_request", field), query


def test_city_details_list_versions_newest_first_and_every_upload(
    predict_app: ModuleType,
    service: api.CityApi,
    registry: CountingRegistry,
    lambda_context: FakeLambdaContext,
) -> None:
    published(registry, "NewYork_NY", V1)
    uploaded(registry, "NewYork_NY", V2, REJECTED, "too few rows")
    published(registry, "NewYork_NY", V3)
    status, body, _ = call(predict_app, load_event("api_get_city"), lambda_context)
    assert status == 200
    assert (body["city"], body["current_version"], body["pinned"]) == ("NewYork_NY", V3, False)
    assert [(v["version"], v["current"]) for v in body["versions"]] == [(V3, True), (V1, False)]
    assert [(u["version"], u["status"]) for u in body["uploads"]] == [
        (V3, PUBLISHED),
        (V2, REJECTED),
        (V1, PUBLISHED),
    ]
    assert body["uploads"][1]["reason"] == "too few rows"


# -- rollback ------------------------------------------------------------------------


def rollback_event(
    version: object, *, city: str = "NewYork_NY", admin: bool = True
) -> dict[str, Any]:
    return event_for("api_rollback", city=city, body=json.dumps({"version": version}), admin=admin)


def test_an_admin_rollback_cuts_over_at_its_instant_here_too(
    predict_app: ModuleType,
    service: api.CityApi,
    registry: CountingRegistry,
    runtime: FakeRuntime,
    wall: FakeClock,
    lambda_context: FakeLambdaContext,
) -> None:
    published(registry, "NewYork_NY", V1)
    published(registry, "NewYork_NY", V2)
    assert call(predict_app, load_event("api_predict"), lambda_context)[1]["model_version"] == V2
    status, body, _ = call(predict_app, rollback_event(V1), lambda_context)
    assert status == 200
    assert (body["city"], body["current_version"], body["pinned"]) == ("NewYork_NY", V1, True)
    # the answer says when v1 takes over: once every environment's cache knows it
    lead = TTL + CUTOVER_MARGIN_SECONDS
    assert (body["answering_version"], body["cutover_at"]) == (V2, epoch_iso(wall.now + lead))
    # until then v2 answers, in this environment too (another may still hold v2)
    assert call(predict_app, load_event("api_predict"), lambda_context)[1]["model_version"] == V2
    wall.now += lead
    assert call(predict_app, load_event("api_predict"), lambda_context)[1]["model_version"] == V1


def test_rollback_refusals(
    predict_app: ModuleType,
    service: api.CityApi,
    registry: CountingRegistry,
    lambda_context: FakeLambdaContext,
) -> None:
    published(registry, "NewYork_NY", V2)
    uploaded(registry, "NewYork_NY", V1, FAILED, "AlgorithmError")
    cases = [
        (rollback_event(V2, admin=False), 403, "forbidden", "Authorization"),
        (rollback_event(V1), 409, "not_publishable", "version"),
        (rollback_event(V3), 409, "unknown_run", "version"),
        (rollback_event("v1"), 400, "invalid_version", "version"),
        (rollback_event(1), 400, "bad_request", "version"),
        (rollback_event(""), 400, "invalid_version", "version"),
        (rollback_event(V2.replace("2", "\u0662")), 400, "invalid_version", "version"),  # Arabic 2
        (rollback_event("v1", city="Boston_MA"), 400, "invalid_version", "version"),
        (rollback_event(int("9" * 4000)), 400, "bad_request", "version"),
        (event_for("api_rollback", body='{"version": ' + "9" * 5000 + "}"), 400, "bad_request",
         "version"),
        (event_for("api_rollback", body='{"version": ' + "[" * 100_000 + "]" * 100_000 + "}"),
         400, "bad_request", "body"),
        (event_for("api_rollback", body=f'{{"version": "{V2}", "version": "{V2}"}}'), 400,
         "bad_request", "version"),
        (rollback_event(V2, city="Boston_MA"), 404, "unknown_city", "city"),
        (event_for("api_rollback", body="{}"), 400, "bad_request", "version"),
        (event_for("api_rollback", body="{"), 400, "bad_request", "body"),
        (event_for("api_rollback", body="x", content_type="text/plain"), 415,
         "unsupported_media_type", "Content-Type"),
        (event_for("api_rollback", body=f'{{"version": "{V1}"}}',
                   content_type="multipart/form-data"), 415, "unsupported_media_type",
         "Content-Type"),
    ]  # fmt: skip
    for event, status, code, field in cases:
        got = call(predict_app, event, lambda_context)
        assert (got[0], got[1]["code"], got[1].get("field")) == (status, code, field), got
    assert registry.get_city("NewYork_NY").current == V2


# -- routes and the OpenAPI document -------------------------------------------------


def test_openapi_document_is_valid_openapi_3_listing_the_routes(
    predict_app: ModuleType, service: api.CityApi, lambda_context: FakeLambdaContext
) -> None:
    # WHEN the document is fetched without any key (the route has no authorizer)
    status, document, headers = call(predict_app, load_event("api_openapi"), lambda_context)
    # THEN it is valid OpenAPI 3 and lists every route with its method
    assert (status, headers["Content-Type"]) == (200, "application/json")
    validate_openapi(document)
    assert document["openapi"].startswith("3.")
    assert {path: sorted(ops) for path, ops in document["paths"].items()} == {
        "/cities": ["get"],
        "/cities/{city}": ["get"],
        "/cities/{city}/predictions": ["post"],
        "/cities/{city}/rollback": ["post"],
    }
    predict = document["paths"]["/cities/{city}/predictions"]["post"]
    assert sorted(predict["requestBody"]["content"]) == ["application/json", "text/csv"]
    instance = predict["requestBody"]["content"]["application/json"]["schema"]["properties"][
        "instances"
    ]
    assert instance["maxItems"] == api.MAX_ROWS
    assert instance["items"]["required"] == list(FEATURES)
    assert instance["items"]["properties"]["SQUARE_FEET"]["exclusiveMinimum"] == 0
    assert sorted(predict["responses"]) == [
        "200", "400", "401", "403", "404", "413", "415", "424", "429", "500", "502", "503"
    ]  # fmt: skip
    # AND the rollback body carries the version pattern the server enforces
    rollback = document["paths"]["/cities/{city}/rollback"]["post"]["requestBody"]["content"]
    version = next(
        iter(
            document["components"]["schemas"][name]
            for name in document["components"]["schemas"]
            if name.startswith("RollbackRequest")
        )
    )
    assert version["properties"]["version"]["pattern"] == api.VERSION_REGEX, rollback
    assert re.fullmatch(api.VERSION_REGEX[1:-1], V1) and not re.search(api.VERSION_REGEX, "")
    # AND it documents what the API answers: no 422, bearer keys on every route
    for operations in document["paths"].values():
        for operation in operations.values():
            assert "422" not in operation["responses"]
            assert "401" in operation["responses"]
            assert operation["security"] == [{"apiKey": []}]
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"


def test_unknown_routes_are_a_json_404(
    predict_app: ModuleType, service: api.CityApi, lambda_context: FakeLambdaContext
) -> None:
    event = load_event("api_get_cities")
    event["path"] = "/cities/NewYork_NY/models"
    status, body, _ = call(predict_app, event, lambda_context)
    assert (status, body["code"]) == (404, "not_found")


# -- the domain code -----------------------------------------------------------------


def test_caller_reads_the_authorizer_context_as_api_gateway_passes_it() -> None:
    caller = api.Caller.from_authorizer(
        {"principalId": "k1", "key_id": "k1", "cities": "NewYork_NY, San*", "admin": "false",
         "integrationLatency": 12}
    )  # fmt: skip
    assert caller == api.Caller("k1", ("NewYork_NY", "San*"), admin=False)
    assert caller.may_see("SanDiego_CA") and not caller.may_see("Chicago_IL")
    assert api.Caller.from_authorizer({"cities": "*", "admin": "true"}).admin
    assert api.Caller.from_authorizer(None) == api.Caller("", (), admin=False)


def test_every_domain_error_the_api_raises_has_a_4xx_or_a_deliberate_5xx() -> None:
    from citymodels import endpoint, errors, registry

    assert api.http_status(errors.InvalidCityId("x")) == 400
    assert api.http_status(errors.InvalidRecord("x")) == 400
    assert api.http_status(registry.UnknownCity("x")) == 404
    assert api.http_status(api.NoModelServing("x")) == 404
    assert api.http_status(registry.NotPublishable("x")) == 409
    assert api.http_status(api.PayloadTooLarge("x")) == 413
    assert api.http_status(endpoint.ModelFailed("x")) == 424
    assert api.http_status(endpoint.ModelNotReady("x")) == 503
    assert api.http_status(RuntimeError("x")) == 500


def test_request_schema_follows_the_field_rules() -> None:
    items = api.prediction_request_schema()["content"]["application/json"]["schema"]["properties"][
        "instances"
    ]["items"]["properties"]
    for column, rule in FIELD_RULES.items():
        if column == "PRICE":
            continue
        assert items[column]["maximum"] == rule.maximum
        assert items[column]["type"] == ("integer" if rule.whole else "number")


def test_parsed_rows_are_what_the_endpoint_reads() -> None:
    house = {k: v for k, v in HOUSE.items() if k != "DECK"}
    body = api.RequestBody(predict_body(house | {"deck": " Y ", "YEAR_BUILT": "1995"}))
    assert api.rows_to_csv(api.parse_prediction_rows(body)) == "1995,2100.5,3,2.5,0.8,2,y,y\n"


def test_the_served_json_body_schema_is_the_validating_models(
    predict_app: ModuleType, service: api.CityApi, lambda_context: FakeLambdaContext
) -> None:
    # WHEN the OpenAPI document is fetched
    _, document, _ = call(predict_app, load_event("api_openapi"), lambda_context)
    body = document["paths"]["/cities/{city}/predictions"]["post"]["requestBody"]
    served = body["content"]["application/json"]["schema"]
    # THEN the JSON body's schema is the model's that validates it, House written in place
    # (a '#/$defs/House' reference would point at the document's root)
    model = api.PredictionRequest.model_json_schema()
    house = model.pop("$defs")["House"]
    model["properties"]["instances"]["items"] = house
    assert served == model
    assert "$ref" not in json.dumps(body) and "$defs" not in json.dumps(body)
    # AND it says which forms beyond the schema the API accepts
    assert "any case" in house["description"] and "PRICE" in house["description"]
    # AND the CSV body keeps its own schema
    assert body["content"]["text/csv"]["schema"]["pattern"] == api.csv_body_pattern()


def _edges(column: str) -> list[object]:
    """Values at and just beyond a column's rule (or its flag vocabulary and others)."""
    if column not in FIELD_RULES:
        return ["y", "n", "x", "", "yes", None, 1]
    rule = FIELD_RULES[column]
    low, high = rule.minimum, rule.maximum
    return [low, high, low - 1, high + 1, low + 0.5, high - 0.5, (low + high) / 2, "", None]


@pytest.mark.parametrize("column", FEATURES)
def test_the_json_schema_and_the_api_agree_at_every_bound(column: str) -> None:
    schema = api.json_body_schema()
    # GIVEN the documented schema of a house, with every bound of the column's rule in it
    documented = schema["properties"]["instances"]["items"]["properties"][column]
    if column in FIELD_RULES:
        rule = FIELD_RULES[column]
        low = "exclusiveMinimum" if rule.exclusive_minimum else "minimum"
        assert (documented[low], documented["maximum"]) == (rule.minimum, rule.maximum)
        assert documented["type"] == ("integer" if rule.whole else "number")
    else:
        assert documented["enum"] == ["y", "n"]
    validator = Draft202012Validator(schema)
    for value in _edges(column):
        # WHEN a house with the value is sent
        document = {"instances": [HOUSE | {column: value}]}
        refusal = _refusal(json.dumps(document))
        # THEN it is refused exactly when the schema refuses it, naming the field and its rule
        assert (refusal is None) == validator.is_valid(document), (value, refusal)
        if refusal is not None:
            assert refusal.field == f"instances[0].{column}"
            if column in FIELD_RULES and isinstance(value, float):
                assert FIELD_RULES[column].describe() in refusal.message


def _refusal(body: str) -> api.BadRequest | None:
    try:
        api.parse_prediction_rows(api.RequestBody(body))
    except api.BadRequest as err:
        return err
    return None


def test_json_and_csv_bodies_give_the_endpoint_the_same_rows() -> None:
    # GIVEN 300 random houses within the rules, whole numbers and fractions
    rng = random.Random(11)
    houses = []
    for _ in range(300):
        house: dict[str, Any] = {}
        for column in FEATURES:
            rule = FIELD_RULES.get(column)
            if rule is None:
                house[column] = rng.choice(["y", "n"])
            elif rule.whole or rng.random() < 0.3:
                house[column] = rng.randint(int(rule.minimum) + 1, int(rule.maximum))
            else:
                house[column] = round(rng.uniform(rule.minimum + 0.001, rule.maximum), 3)
        houses.append(house)
    # WHEN they are sent as JSON, as JSON with strings for numbers, and as CSV
    json_rows = api.parse_prediction_rows(api.RequestBody(predict_body(*houses)))
    as_text = [{c: str(v) for c, v in house.items()} for house in houses]
    text_rows = api.parse_prediction_rows(api.RequestBody(predict_body(*as_text)))
    csv_body = "".join(",".join(str(house[c]) for c in FEATURES) + "\n" for house in houses)
    csv_rows = api.parse_prediction_rows(api.RequestBody(csv_body, content_type="text/csv"))
    # THEN the endpoint would read the same rows
    assert json_rows == text_rows == csv_rows
    assert len(json_rows) == len(houses)


def test_lax_forms_outside_the_schema_are_still_accepted() -> None:
    # GIVEN the sample house written as the API has always accepted it, not as documented
    lax = {
        "year_built": "1995",
        " SQUARE_FEET ": " 2100.5 ",
        "NUM_BEDROOMS": "3",
        "Num_Bathrooms": "2.5",
        "LOT_ACRES": "8e-1",
        "GARAGE_SPACES": "2.0",
        "FRONT_PORCH": " Y ",
        "deck": "N",
        "PRICE": 250000,
    }
    document = {"instances": [lax]}
    assert not Draft202012Validator(api.json_body_schema()).is_valid(document)
    # WHEN it is sent, THEN the endpoint reads the same row as for the documented form
    got = api.parse_prediction_rows(api.RequestBody(json.dumps(document)))
    assert got == api.parse_prediction_rows(api.RequestBody(predict_body(HOUSE)))
