"""The onboard function: an upload landed in ``raw/`` → validate it, start its processing job.

Trigger: EventBridge ``aws.s3`` ``Object Created`` on the DataBucket, key prefix
``RAW_PREFIX`` (docs/application.md). Invalid uploads are REJECTED with a report,
re-uploads of published content are DUPLICATE, anything else starts a processing job;
see :meth:`citymodels.pipeline.Pipeline.onboard`.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.data_classes import (
    S3EventBridgeNotificationEvent,
    event_source,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from citymodels.handlers import report
from citymodels.pipeline import (
    Pipeline,
    PipelineSettings,
    ProcessingJobConfig,
    UploadEvent,
)
from citymodels.settings import env

STACK_NAME = env("STACK_NAME")
DATA_BUCKET = env("DATA_BUCKET")
REGISTRY_TABLE = env("REGISTRY_TABLE")
RAW_PREFIX = env("RAW_PREFIX")
SAGEMAKER_ROLE_ARN = env("SAGEMAKER_ROLE_ARN")
SKLEARN_IMAGE_URI = env("SKLEARN_IMAGE_URI")
PROCESSING_INSTANCE_TYPE = env("PROCESSING_INSTANCE_TYPE")
PROCESSING_CODE_URI = env("PROCESSING_CODE_URI")
CAPACITY_RETRY_QUEUE_URL = env("CAPACITY_RETRY_QUEUE_URL")

logger = Logger()
tracer = Tracer(patch_modules=["botocore"])  # only botocore is called: patch no more
metrics = Metrics()

SETTINGS = PipelineSettings(
    stack=STACK_NAME,
    bucket=DATA_BUCKET,
    registry_table=REGISTRY_TABLE,
    raw_prefix=RAW_PREFIX,
    processing=ProcessingJobConfig(
        role_arn=SAGEMAKER_ROLE_ARN,
        image_uri=SKLEARN_IMAGE_URI,
        instance_type=PROCESSING_INSTANCE_TYPE,
        code_uri=PROCESSING_CODE_URI,
    ),
    retry_queue_url=CAPACITY_RETRY_QUEUE_URL,
)
pipeline = Pipeline(SETTINGS)
"""Built once per execution environment (its clients on first use); tests assign their own."""


@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE, clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_source(data_class=S3EventBridgeNotificationEvent)
def lambda_handler(event: S3EventBridgeNotificationEvent, context: LambdaContext) -> dict[str, Any]:
    """Handle one ``Object Created`` event; return the outcome."""
    detail = event.detail
    upload = UploadEvent(
        bucket=detail.bucket.name,
        key=detail.object.key,  # URL-decoded by Powertools
        time=event.time,
        sequencer=detail.object.sequencer,
        size=detail.object.size,
    )
    logger.append_keys(key=upload.key)
    outcome = pipeline.onboard(upload)
    return report(outcome, logger, tracer, metrics)
