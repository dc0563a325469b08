"""citymodels.auth: city patterns, the authorizer policy and the TargetModel IAM policy."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
    parse_api_gateway_arn,
)

from citymodels.auth import (
    InvalidPattern,
    authorizer_policy,
    city_allowed,
    deny_policy,
    target_model_policy,
    validate_patterns,
)
from citymodels.layout import target_model
from citymodels.versions import mint_version

ROUTE_ARN = parse_api_gateway_arn(
    "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/Prod/GET/cities"
)
BASE = "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/Prod"
ENDPOINT_ARN = "arn:aws:sagemaker:us-east-1:123456789012:endpoint/cmtest-endpoint"
V1 = mint_version("2026-11-25T01:00:00Z", "01")


def string_like(patterns: list[str], value: str) -> bool:
    """IAM's StringLike: ``*`` any run of characters, ``?`` one character."""
    return any(
        re.fullmatch(re.escape(p).replace(r"\*", ".*").replace(r"\?", "."), value) for p in patterns
    )


# -- patterns ------------------------------------------------------------------------


def test_patterns_are_validated_stripped_and_deduplicated() -> None:
    assert validate_patterns([" NewYork_NY", "San*", "NewYork_NY", "*"]) == [
        "NewYork_NY",
        "San*",
        "*",
    ]


@pytest.mark.parametrize(
    "patterns",
    [[], [""], ["*San"], ["San**"], ["New York"], ["a/b"], ["9Lives"], ["NY?"], [7]],
)
def test_invalid_patterns_are_refused_naming_the_field(patterns: list[Any]) -> None:
    with pytest.raises(InvalidPattern) as err:
        validate_patterns(patterns)
    assert err.value.field == "cities"


@pytest.mark.parametrize(
    ("patterns", "city", "allowed"),
    [
        (["NewYork_NY"], "NewYork_NY", True),
        (["NewYork_NY"], "NewYork_NYC", False),
        (["NewYork_NY"], "newyork_ny", False),
        (["San*"], "SanDiego_CA", True),
        (["San*"], "San", True),
        (["San*"], "Sacramento_CA", False),
        (["*"], "Anywhere", True),
        ([], "NewYork_NY", False),
        (["Chicago_IL", "San*"], "SanJose_CA", True),
    ],
)
def test_city_allowed(patterns: list[str], city: str, allowed: bool) -> None:
    assert city_allowed(patterns, city) is allowed


# -- the authorizer's policy ---------------------------------------------------------


def test_authorizer_policy_lists_every_route_of_the_key() -> None:
    policy = authorizer_policy(
        ROUTE_ARN, principal_id="k1", patterns=["NewYork_NY", "San*"], admin=False
    )
    [statement] = policy["policyDocument"]["Statement"]
    assert (statement["Effect"], statement["Action"]) == ("Allow", "execute-api:Invoke")
    assert statement["Resource"] == [
        f"{BASE}/GET/cities",
        f"{BASE}/GET/cities/NewYork_NY",
        f"{BASE}/POST/cities/NewYork_NY/predictions",
        f"{BASE}/GET/cities/San*",
        f"{BASE}/POST/cities/San*/predictions",
    ]
    assert policy["principalId"] == "k1"
    assert policy["context"] == {"key_id": "k1", "cities": "NewYork_NY,San*", "admin": "false"}


def test_admin_policy_adds_rollback_for_every_city() -> None:
    policy = authorizer_policy(ROUTE_ARN, principal_id="k2", patterns=["*"], admin=True)
    resources = policy["policyDocument"]["Statement"][0]["Resource"]
    assert f"{BASE}/POST/cities/*/rollback" in resources
    assert policy["context"]["admin"] == "true"


def test_deny_policy_denies_the_whole_stage() -> None:
    policy = deny_policy(ROUTE_ARN)
    [statement] = policy["policyDocument"]["Statement"]
    assert (statement["Effect"], statement["Resource"]) == ("Deny", [f"{BASE}/*/*"])


# -- the TargetModel policy (the notebook's section 9) -------------------------------


def test_target_model_policy_restricts_invoke_endpoint_to_the_citys_models() -> None:
    policy = target_model_policy(ENDPOINT_ARN, ["NewYork_NY"])
    [statement] = policy["Statement"]
    assert statement["Action"] == "sagemaker:InvokeEndpoint"
    assert statement["Resource"] == ENDPOINT_ARN
    assert statement["Condition"] == {"StringLike": {"sagemaker:TargetModel": ["NewYork_NY/*"]}}
    targets = statement["Condition"]["StringLike"]["sagemaker:TargetModel"]
    # every version of the city, and nothing of a city whose id merely starts the same
    assert string_like(targets, target_model("NewYork_NY", V1))
    assert not string_like(targets, target_model("NewYork_NYC", V1))
    assert not string_like(targets, target_model("Chicago_IL", V1))


def test_target_model_policy_for_prefixes_and_everything() -> None:
    condition = target_model_policy(ENDPOINT_ARN, ["San*", "*", "San*"])["Statement"][0][
        "Condition"
    ]
    assert condition["StringLike"]["sagemaker:TargetModel"] == ["San*/*", "*"]
    targets = target_model_policy(ENDPOINT_ARN, ["San*"])["Statement"][0]["Condition"][
        "StringLike"
    ]["sagemaker:TargetModel"]
    assert string_like(targets, target_model("SanDiego_CA", V1))
    assert not string_like(targets, target_model("Sacramento_CA", V1))
    with pytest.raises(InvalidPattern):
        target_model_policy(ENDPOINT_ARN, ["New York"])
