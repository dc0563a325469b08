"""The REQUEST authorizer: Bearer key → a policy for exactly the key's cities, whatever
route API Gateway later reuses the cached policy for."""

from __future__ import annotations

import copy
import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from moto import mock_aws

from citymodels import api
from citymodels.registry import ApiKey, Registry
from tests.aws import REGION, TABLE, FakeLambdaContext, create_registry_table, load_event

ROOT = Path(__file__).resolve().parents[2]
API = "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/Prod"


@pytest.fixture(scope="module")
def authorize_app() -> ModuleType:
    """``functions/authorize/app.py`` imported as Lambda would, with its environment."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REGISTRY_TABLE", TABLE)
        patch.setenv("AWS_DEFAULT_REGION", REGION)
        patch.setenv("POWERTOOLS_SERVICE_NAME", "citymodels-authorizer")
        spec = importlib.util.spec_from_file_location(
            "authorize_app", ROOT / "functions" / "authorize" / "app.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module


@pytest.fixture(scope="module")
def dynamodb() -> Iterator[Any]:
    """One mocked DynamoDB for the module, a fresh table per test (the full ``aws``
    fixture's S3, SQS and SageMaker are not needed here and cost most of a test's time)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            patch.setenv(name, "testing")
        patch.setenv("AWS_DEFAULT_REGION", REGION)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
            patch.delenv(name, raising=False)
        with mock_aws():
            yield boto3.client("dynamodb", region_name=REGION)


@pytest.fixture
def registry(dynamodb: Any) -> Iterator[Registry]:
    create_registry_table(dynamodb)
    yield Registry(TABLE, client=dynamodb)
    dynamodb.delete_table(TableName=TABLE)


@pytest.fixture
def authorizer(
    registry: Registry, authorize_app: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> ModuleType:
    monkeypatch.setattr(authorize_app, "registry", registry)
    return authorize_app


def request(header: str | None, method: str = "GET", path: str = "/cities") -> dict[str, Any]:
    """The sample REQUEST authorizer event, for another header or route."""
    event = copy.deepcopy(load_event("authorizer_request"))
    for headers in (event["headers"], event["multiValueHeaders"]):
        headers.pop("Authorization")
        if header is not None:
            headers["Authorization"] = header if headers is event["headers"] else [header]
    event["methodArn"] = f"{API}/{method}{path}"
    event["httpMethod"], event["path"] = method, path
    return event


def allows(policy: dict[str, Any], method: str, path: str) -> bool:
    """Evaluate an authorizer policy for a route as API Gateway does.

    Resources match with IAM wildcards (``*`` any run of characters, ``/`` included;
    ``?`` one character); an explicit Deny wins; anything not allowed is denied.
    """
    arn = f"{API}/{method}{path}"
    decisions = set()
    for statement in policy["policyDocument"]["Statement"]:
        resources = statement["Resource"]
        for resource in [resources] if isinstance(resources, str) else resources:
            pattern = re.escape(resource).replace(r"\*", ".*").replace(r"\?", ".")
            if re.fullmatch(pattern, arn):
                decisions.add(statement["Effect"])
    return "Allow" in decisions and "Deny" not in decisions


def authorize(authorizer: ModuleType, event: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = authorizer.lambda_handler(event, FakeLambdaContext())
    return result


@pytest.fixture
def user_key(registry: Registry) -> tuple[str, ApiKey]:
    return registry.create_key(["NewYork_NY", "San*"], description="NY and the Sans")


def test_a_policy_made_on_get_cities_covers_every_route_of_the_key_and_nothing_else(
    authorizer: ModuleType, user_key: tuple[str, ApiKey]
) -> None:
    # GIVEN a key for NewYork_NY and San*, first used on GET /cities
    secret, key = user_key
    policy = authorize(authorizer, request(f"Bearer {secret}", "GET", "/cities"))
    # WHEN API Gateway reuses that cached policy for the key's next calls
    # THEN it allows exactly the key's cities, on every route a key may call
    assert policy["principalId"] == key.key_id
    for method, path in [
        ("GET", "/cities"),
        ("GET", "/cities/NewYork_NY"),
        ("POST", "/cities/NewYork_NY/predictions"),
        ("GET", "/cities/SanDiego_CA"),
        ("POST", "/cities/SanJose_CA/predictions"),
    ]:
        assert allows(policy, method, path), (method, path)
    for method, path in [
        ("GET", "/cities/Chicago_IL"),
        ("POST", "/cities/Chicago_IL/predictions"),
        ("POST", "/cities/NewYork_NYC/predictions"),
        ("GET", "/cities/Sacramento_CA"),
        ("POST", "/cities/NewYork_NY/rollback"),
        ("DELETE", "/cities/NewYork_NY"),
    ]:
        assert not allows(policy, method, path), (method, path)


def test_the_policy_does_not_depend_on_the_route_that_made_it(
    authorizer: ModuleType, user_key: tuple[str, ApiKey]
) -> None:
    secret, _ = user_key
    first = authorize(
        authorizer, request(f"Bearer {secret}", "POST", "/cities/SanJose_CA/predictions")
    )
    second = authorize(authorizer, request(f"Bearer {secret}", "GET", "/cities/Chicago_IL"))
    assert first == second


def test_the_context_gives_the_predict_handler_the_same_grants(
    authorizer: ModuleType, user_key: tuple[str, ApiKey]
) -> None:
    # API Gateway hands the context to the handler as requestContext.authorizer
    secret, key = user_key
    policy = authorize(authorizer, request(f"Bearer {secret}"))
    assert policy["context"] == {
        "key_id": key.key_id,
        "cities": "NewYork_NY,San*",
        "admin": "false",
    }
    assert all(isinstance(v, str) for v in policy["context"].values())
    caller = api.Caller.from_authorizer(policy["context"])
    assert caller.may_see("SanFrancisco_CA") and not caller.may_see("Chicago_IL")
    assert not caller.admin


def test_only_admin_keys_may_roll_back(registry: Registry, authorizer: ModuleType) -> None:
    admin_secret, _ = registry.create_key(["*"], admin=True)
    policy = authorize(authorizer, request(f"Bearer {admin_secret}"))
    assert allows(policy, "POST", "/cities/Chicago_IL/rollback")
    assert allows(policy, "POST", "/cities/Anywhere/predictions")
    assert policy["context"]["admin"] == "true"
    limited_secret, _ = registry.create_key(["NewYork_NY"])
    policy = authorize(authorizer, request(f"Bearer {limited_secret}"))
    assert not allows(policy, "POST", "/cities/NewYork_NY/rollback")


def test_header_and_scheme_are_case_insensitive(
    authorizer: ModuleType, user_key: tuple[str, ApiKey]
) -> None:
    secret, key = user_key
    event = request(None)
    event["headers"]["authorization"] = f"bearer  {secret} "
    assert authorize(authorizer, event)["principalId"] == key.key_id


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("Basic dXNlcjpwYXNz", id="basic scheme"),
        pytest.param("Bearer", id="no key"),
        pytest.param("Bearer cmk_a cmk_b", id="two keys"),
        pytest.param("cmk_" + "A" * 43, id="no scheme"),
        pytest.param("Bearer cmk_" + "A" * 43, id="unknown key"),
        pytest.param("Bearer " + "x" * 5000, id="oversized"),
        pytest.param("REVOKED", id="revoked key"),
    ],
)
def test_no_usable_key_is_unauthorized(
    registry: Registry, authorizer: ModuleType, user_key: tuple[str, ApiKey], header: str | None
) -> None:
    secret, key = user_key
    if header == "REVOKED":
        registry.revoke_key(key.key_id)
        header = f"Bearer {secret}"
    # WHEN the authorizer gets no usable key
    with pytest.raises(Exception) as raised:  # noqa: PT011 - the convention is a bare Exception
        authorize(authorizer, request(header))
    # THEN it fails with exactly "Unauthorized": API Gateway's convention for a 401
    assert raised.type is Exception
    assert str(raised.value) == "Unauthorized"
