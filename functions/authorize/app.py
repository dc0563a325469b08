"""The API's REQUEST authorizer: ``Authorization: Bearer <key>`` → a policy for the key's cities.

API Gateway answers 401 itself when the header is missing; a malformed header or an
unknown or revoked key makes this function fail with the message ``Unauthorized``,
API Gateway's convention for a 401 (which also counts as a Lambda error). The policy
allows everything the key may do (:func:`citymodels.auth.authorizer_policy`), because
API Gateway caches it by the header and reuses it for every route within the TTL.

It runs on every cache miss in front of every route, so it stays small: a Logger and
the registry's DynamoDB client, no Tracer (the X-Ray SDK's import is most of a cold
start here; API Gateway's own trace shows the authorizer's duration).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes import event_source
from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
    APIGatewayAuthorizerRequestEvent,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from citymodels.api import Unauthorized, authorize
from citymodels.registry import Registry
from citymodels.settings import env

REGISTRY_TABLE = env("REGISTRY_TABLE")

logger = Logger()
registry = Registry(REGISTRY_TABLE)


@logger.inject_lambda_context(clear_state=True)
@event_source(data_class=APIGatewayAuthorizerRequestEvent)
def lambda_handler(
    event: APIGatewayAuthorizerRequestEvent, context: LambdaContext
) -> dict[str, Any]:
    try:
        return authorize(registry, event.headers.get("Authorization"), event.parsed_arn)
    except Unauthorized as err:
        logger.info("unauthorized", reason=err.reason, path=event.path)
        # Exactly this, as in AWS's authorizer blueprints: API Gateway answers 401.
        raise Exception("Unauthorized") from err
