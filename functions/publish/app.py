"""The publish function: a training job ended → quality gate and alias, or record the failure.

Trigger: EventBridge ``aws.sagemaker`` ``SageMaker Training Job State Change``,
``TrainingJobName`` prefix ``cm-{stack}-``, status Completed / Failed / Stopped
(docs/application.md). Completed: the model is copied to ``mme/{city}/{version}.tar.gz``,
called through the endpoint by the quality gate, and the alias moves if the gate passes
and no newer version was published; see
:meth:`citymodels.pipeline.Pipeline.on_training_state`.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.data_classes import event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from citymodels.handlers import TrainingJobStateChange, report
from citymodels.pipeline import Pipeline, PipelineSettings

SETTINGS = PipelineSettings.from_env(gate=True)

logger = Logger()
tracer = Tracer(patch_modules=["botocore"])  # only botocore is called: patch no more
metrics = Metrics()
pipeline = Pipeline(SETTINGS)
"""Built once per execution environment (its clients on first use); tests assign their own."""


@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE, clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_source(data_class=TrainingJobStateChange)
def lambda_handler(event: TrainingJobStateChange, context: LambdaContext) -> dict[str, Any]:
    """Handle one training job state change; return the outcome."""
    logger.append_keys(job_name=event.job_name, job_status=event.status)
    outcome = pipeline.on_training_state(event.job_name, event.status)
    return report(outcome, logger, tracer, metrics)
