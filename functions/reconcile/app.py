"""The reconcile function: runs that never end are moved on or failed; failures are replayed.

Trigger: an EventBridge schedule (``ReconcileRate``, docs/application.md). Each sweep
decides the runs PROCESSING or TRAINING longer than ``STUCK_RUN_SECONDS`` and replays
what waits in the FailureQueue; see :meth:`citymodels.reconcile.Reconciler.sweep`.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from citymodels.handlers import report
from citymodels.pipeline import Pipeline, PipelineSettings
from citymodels.reconcile import Reconciler, ReconcileSettings
from citymodels.settings import env, env_float

SETTINGS = PipelineSettings.from_env(uploads=True, processing=True, training=True, gate=True)
BOUNDS = ReconcileSettings(
    stuck_after_seconds=env_float("STUCK_RUN_SECONDS"),
    fail_after_seconds=env_float("FAIL_STUCK_RUN_SECONDS"),
    failure_queue_url=env("FAILURE_QUEUE_URL"),
)

logger = Logger()
tracer = Tracer(patch_modules=["botocore"])  # only botocore is called: patch no more
metrics = Metrics()
reconciler = Reconciler(Pipeline(SETTINGS), BOUNDS)
"""Built once per execution environment (its clients on first use); tests assign their own."""


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_source(data_class=EventBridgeEvent)
def lambda_handler(event: EventBridgeEvent, context: LambdaContext) -> dict[str, Any]:
    """Run one sweep; return its outcomes."""
    outcomes = reconciler.sweep(time_left=lambda: context.get_remaining_time_in_millis() / 1000)
    metrics.add_metric(name="ReconcileSweeps", unit=MetricUnit.Count, value=1)  # it runs
    return {"outcomes": [report(outcome, logger, tracer, metrics) for outcome in outcomes]}
