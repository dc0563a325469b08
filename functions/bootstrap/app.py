"""The Bootstrap custom resource's handler (template.yaml ``Bootstrap``).

Writes ``artifacts/processing/`` and the preprocessor model before the SageMaker Model
and the first job need them, after checking the stack name; answers CloudFormation
with where they are. The logic is in :mod:`custom_resource` and :mod:`artifacts`.
"""

from __future__ import annotations

from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from custom_resource import respond

logger = Logger()
s3 = boto3.client("s3")


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> None:
    """Answer one CloudFormation request (never raises: the answer carries any failure)."""
    logger.append_keys(request_type=event.get("RequestType"), stack_id=event.get("StackId"))
    response = respond(event, s3, log_stream=getattr(context, "log_stream_name", ""))
    logger.info(
        "answered CloudFormation",
        status=response.status,
        reason=response.reason,
        data=dict(response.data),
    )
