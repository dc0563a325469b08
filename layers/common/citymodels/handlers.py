"""What the pipeline's Lambda handlers share: typed events (an upload, SageMaker job
state changes), and how an outcome is reported (log keys, trace annotation, EMF
metrics, one log line).

Only the handlers import this module (it needs Powertools, which the layer ships);
the SageMaker containers never do.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import (
    EventBridgeEvent,
    S3EventBridgeNotificationEvent,
)

from citymodels.pipeline import Outcome, UploadEvent


class ObjectCreated(S3EventBridgeNotificationEvent):
    """An S3 ``Object Created`` event delivered by EventBridge (an upload to ``raw/``)."""

    @property
    def upload(self) -> UploadEvent:
        """The facts of the upload the pipeline uses."""
        detail = self.detail
        return UploadEvent(
            bucket=detail.bucket.name,
            key=detail.object.key,  # URL-decoded by Powertools
            time=self.time,
            sequencer=detail.object.sequencer,
            size=detail.object.size,
            # absent from the events of an unversioned bucket
            version_id=detail.object.get("version-id"),
        )


class ProcessingJobStateChange(EventBridgeEvent):
    """A ``SageMaker Processing Job State Change`` event (its detail is DescribeProcessingJob's)."""

    @property
    def job_name(self) -> str:
        """The processing job's name."""
        return str(self.detail["ProcessingJobName"])

    @property
    def status(self) -> str:
        """``InProgress``, ``Completed``, ``Failed``, ``Stopping`` or ``Stopped``."""
        return str(self.detail["ProcessingJobStatus"])


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


def report(
    outcome: Outcome, logger: Logger, tracer: Tracer, metrics: Metrics, **log_keys: Any
) -> dict[str, Any]:
    """Report an outcome: correlation ids on the logger, the action on the trace, its
    metrics, one log line; return it as the handler's result."""
    logger.append_keys(**outcome.correlation_ids())
    tracer.put_annotation(key="action", value=outcome.action.value)
    for name, value in outcome.metrics.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    logger.info(outcome.message, action=outcome.action.value, status=outcome.status, **log_keys)
    return outcome.to_dict()
