"""The retry function: create again a job that hit ``ResourceLimitExceeded``.

Trigger: SQS ``CapacityRetryQueue`` (docs/application.md). The pipeline put each
message there with a growing delay (60 s doubling to 900 s); a job that still finds no
capacity is put back with the next delay. See :meth:`citymodels.pipeline.Pipeline.resume`.

A malformed message or an unexpected error is raised: the batch is retried (a job
created twice gets ResourceInUse, which is harmless) and ends on the queue's
dead-letter queue, never silently dropped.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.data_classes import SQSEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from citymodels.handlers import report
from citymodels.pipeline import Pipeline, PipelineSettings, RetryMessage

SETTINGS = PipelineSettings.from_env(processing=True, training=True)

logger = Logger()
tracer = Tracer(patch_modules=["botocore"])  # only botocore is called: patch no more
metrics = Metrics()
pipeline = Pipeline(SETTINGS)
"""Built once per execution environment (its clients on first use); tests assign their own."""


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_source(data_class=SQSEvent)
def lambda_handler(event: SQSEvent, context: LambdaContext) -> dict[str, Any]:
    """Resume every postponed job start of the batch; return the outcomes."""
    outcomes = []
    for record in event.records:
        outcome = pipeline.resume(RetryMessage.from_json(record.body))
        outcomes.append(report(outcome, logger, tracer, metrics, message_id=record.message_id))
    return {"outcomes": outcomes}
