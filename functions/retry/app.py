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
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import SQSEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from citymodels.pipeline import (
    Pipeline,
    PipelineSettings,
    ProcessingJobConfig,
    RetryMessage,
    TrainingJobConfig,
)
from citymodels.settings import env, env_json_object

STACK_NAME = env("STACK_NAME")
DATA_BUCKET = env("DATA_BUCKET")
REGISTRY_TABLE = env("REGISTRY_TABLE")
SAGEMAKER_ROLE_ARN = env("SAGEMAKER_ROLE_ARN")
SKLEARN_IMAGE_URI = env("SKLEARN_IMAGE_URI")
PROCESSING_INSTANCE_TYPE = env("PROCESSING_INSTANCE_TYPE")
PROCESSING_CODE_URI = env("PROCESSING_CODE_URI")
LINEAR_LEARNER_IMAGE_URI = env("LINEAR_LEARNER_IMAGE_URI")
TRAINING_INSTANCE_TYPE = env("TRAINING_INSTANCE_TYPE")
HYPERPARAMETERS = env_json_object("HYPERPARAMETERS")
CAPACITY_RETRY_QUEUE_URL = env("CAPACITY_RETRY_QUEUE_URL")

logger = Logger()
tracer = Tracer(patch_modules=["botocore"])  # only botocore is called: patch no more
metrics = Metrics()

SETTINGS = PipelineSettings(
    stack=STACK_NAME,
    bucket=DATA_BUCKET,
    registry_table=REGISTRY_TABLE,
    processing=ProcessingJobConfig(
        role_arn=SAGEMAKER_ROLE_ARN,
        image_uri=SKLEARN_IMAGE_URI,
        instance_type=PROCESSING_INSTANCE_TYPE,
        code_uri=PROCESSING_CODE_URI,
    ),
    training=TrainingJobConfig(
        role_arn=SAGEMAKER_ROLE_ARN,
        image_uri=LINEAR_LEARNER_IMAGE_URI,
        instance_type=TRAINING_INSTANCE_TYPE,
        hyperparameters=HYPERPARAMETERS,
    ),
    retry_queue_url=CAPACITY_RETRY_QUEUE_URL,
)
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
        for name, value in outcome.metrics.items():
            metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
        logger.info(
            outcome.message,
            extra={
                "action": outcome.action.value,
                "status": outcome.status,
                "message_id": record.message_id,
                **outcome.correlation_ids(),
            },
        )
        outcomes.append(outcome.to_dict())
    return {"outcomes": outcomes}
