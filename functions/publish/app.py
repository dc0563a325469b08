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
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from citymodels.pipeline import Pipeline, PipelineSettings
from citymodels.settings import env, env_float

STACK_NAME = env("STACK_NAME")
DATA_BUCKET = env("DATA_BUCKET")
REGISTRY_TABLE = env("REGISTRY_TABLE")
ENDPOINT_NAME = env("ENDPOINT_NAME")
GATE_TOLERANCE = env_float("GATE_TOLERANCE")

logger = Logger()
tracer = Tracer()
metrics = Metrics()

SETTINGS = PipelineSettings(
    stack=STACK_NAME,
    bucket=DATA_BUCKET,
    registry_table=REGISTRY_TABLE,
    endpoint_name=ENDPOINT_NAME,
    gate_tolerance=GATE_TOLERANCE,
)
pipeline = Pipeline(SETTINGS)
"""Built once per execution environment (its clients on first use); tests assign their own."""


class TrainingJobStateChange(EventBridgeEvent):
    """A ``SageMaker Training Job State Change`` event (its detail is DescribeTrainingJob's)."""

    @property
    def job_name(self) -> str:
        """The training job's name."""
        return str(self.detail["TrainingJobName"])

    @property
    def status(self) -> str:
        """``InProgress``, ``Completed``, ``Failed``, ``Stopping`` or ``Stopped``."""
        return str(self.detail["TrainingJobStatus"])


@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE, clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_source(data_class=TrainingJobStateChange)
def lambda_handler(event: TrainingJobStateChange, context: LambdaContext) -> dict[str, Any]:
    """Handle one training job state change; return the outcome."""
    logger.append_keys(job_name=event.job_name, job_status=event.status)
    outcome = pipeline.on_training_state(event.job_name, event.status)
    logger.append_keys(**outcome.correlation_ids())
    tracer.put_annotation(key="action", value=outcome.action.value)
    for name, value in outcome.metrics.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    logger.info(outcome.message, action=outcome.action.value, status=outcome.status)
    return outcome.to_dict()
