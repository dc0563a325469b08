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
from aws_lambda_powertools.utilities.data_classes import event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from citymodels.handlers import ObjectCreated, report
from citymodels.pipeline import Pipeline, PipelineSettings

SETTINGS = PipelineSettings.from_env(uploads=True, processing=True)

logger = Logger()
tracer = Tracer(patch_modules=["botocore"])  # only botocore is called: patch no more
metrics = Metrics()
pipeline = Pipeline(SETTINGS)
"""Built once per execution environment (its clients on first use); tests assign their own."""


@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE, clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_source(data_class=ObjectCreated)
def lambda_handler(event: ObjectCreated, context: LambdaContext) -> dict[str, Any]:
    """Handle one ``Object Created`` event; return the outcome."""
    upload = event.upload
    logger.append_keys(key=upload.key)
    return report(pipeline.onboard(upload), logger, tracer, metrics)
