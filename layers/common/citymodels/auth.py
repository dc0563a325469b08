"""API keys' city patterns, the authorizer's IAM policy, and the TargetModel IAM policy.

A key grants a list of city patterns: an exact city id (``NewYork_NY``), a prefix with
a trailing ``*`` (``San*``), or ``*`` for every city; and optionally admin rights
(rollback). The same patterns produce

- the API Gateway authorizer's policy (:func:`authorizer_policy`), and
- the notebook's section 9 IAM policy for callers that invoke the endpoint directly,
  restricting ``sagemaker:InvokeEndpoint`` with the condition key
  ``sagemaker:TargetModel`` (:func:`target_model_policy`).

API Gateway caches an authorizer's policy by identity source (the Authorization
header) and reuses it for every path the same key calls within the TTL. The policy is
therefore built for everything the key may do, never only for the method that
happened to be called first. The response itself is Powertools'
``APIGatewayAuthorizerResponse``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from citymodels.errors import CityModelsError

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
        APIGatewayAuthorizerResponse,
        APIGatewayRouteArn,
    )

PATTERN = re.compile(r"\*|[A-Za-z][A-Za-z0-9_-]{0,63}\*?")


class InvalidPattern(CityModelsError, ValueError):
    """A city pattern that is not a city id, a prefix with ``*``, or ``*``."""

    code = "invalid_pattern"


def validate_patterns(patterns: Iterable[str]) -> list[str]:
    """Return the patterns, de-duplicated in order, or raise :class:`InvalidPattern`."""
    result: list[str] = []
    for pattern in patterns:
        pattern = pattern.strip() if isinstance(pattern, str) else pattern
        if not isinstance(pattern, str) or PATTERN.fullmatch(pattern) is None:
            raise InvalidPattern(
                f"city pattern {pattern!r} must be a city id (NewYork_NY), a prefix ending "
                "in '*' (San*), or '*'",
                field="cities",
            )
        if pattern not in result:
            result.append(pattern)
    if not result:
        raise InvalidPattern("a key needs at least one city pattern", field="cities")
    return result


def city_allowed(patterns: Sequence[str], city: str) -> bool:
    """Return whether any pattern grants ``city``."""
    for pattern in patterns:
        if pattern == "*" or pattern == city:
            return True
        if pattern.endswith("*") and city.startswith(pattern[:-1]):
            return True
    return False


def authorizer_policy(
    route_arn: APIGatewayRouteArn,
    *,
    principal_id: str,
    patterns: Sequence[str],
    admin: bool,
    context: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return an API Gateway authorizer response allowing exactly what the key may do.

    Allowed for every key: ``GET /cities``. Per pattern: ``GET /cities/{pattern}`` and
    ``POST /cities/{pattern}/predictions``. Admin keys also: ``POST
    /cities/*/rollback``. Everything else is implicitly denied, whatever path the
    cached policy is later reused for.

    Parameters
    ----------
    route_arn
        The called method's ARN, parsed (``event.parsed_arn``): only its API and stage
        are used, never its method or path.
    """
    grants = {
        "key_id": principal_id,
        "cities": ",".join(patterns),
        "admin": "true" if admin else "false",
        **(context or {}),
    }
    response = _response(route_arn, principal_id, grants)
    response.allow_route("GET", "/cities")
    for pattern in patterns:
        response.allow_route("GET", f"/cities/{pattern}")
        response.allow_route("POST", f"/cities/{pattern}/predictions")
    if admin:
        response.allow_route("POST", "/cities/*/rollback")
    return response.asdict()


def deny_policy(route_arn: APIGatewayRouteArn, principal_id: str = "anonymous") -> dict[str, Any]:
    """Return an authorizer response denying everything (a known but revoked key, say)."""
    response = _response(route_arn, principal_id)
    response.deny_all_routes()
    return response.asdict()


def _response(
    route_arn: APIGatewayRouteArn, principal_id: str, context: dict[str, Any] | None = None
) -> APIGatewayAuthorizerResponse:
    """An empty authorizer response for the API and stage of ``route_arn``."""
    # Imported here: the CLI uses this module's patterns and TargetModel policy, and
    # Powertools' data classes would add most of a tenth of a second to its start.
    from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
        APIGatewayAuthorizerResponse,
    )

    return APIGatewayAuthorizerResponse(
        principal_id=principal_id,
        context=context,
        region=route_arn.region,
        aws_account_id=route_arn.aws_account_id,
        api_id=route_arn.api_id,
        stage=route_arn.stage,
        partition=route_arn.partition,
    )


def target_model_policy(endpoint_arn: str, patterns: Sequence[str]) -> dict[str, Any]:
    """Return the IAM policy letting a caller invoke only the patterns' models directly.

    TargetModels are ``{city}/{version}.tar.gz``, so ``NewYork_NY`` becomes
    ``NewYork_NY/*`` under ``StringLike`` (the notebook's section 9).
    """
    targets = ["*" if p == "*" else f"{p}/*" for p in validate_patterns(patterns)]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "InvokeOnlyTheseCities",
                "Effect": "Allow",
                "Action": "sagemaker:InvokeEndpoint",
                "Resource": endpoint_arn,
                "Condition": {"StringLike": {"sagemaker:TargetModel": targets}},
            }
        ],
    }
