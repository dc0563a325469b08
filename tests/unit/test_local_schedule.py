"""The local stack runs the template's schedules (the reconciler's) at the template's rate."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from citymodels_devkit.local.lambdas import EventRouter
from citymodels_devkit.local.stack import LOCAL_IMAGES
from citymodels_devkit.local.template import (
    Schedule,
    TemplateError,
    rate_seconds,
    resolve_template,
)

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"


def test_the_reconcilers_schedule_is_read_from_the_template() -> None:
    stack = resolve_template(TEMPLATE, stack_name="cmtest", parameter_overrides=LOCAL_IMAGES)
    assert stack.schedules == [
        Schedule("ReconcileFunction", "ReconcileFunctionSweep", "rate(15 minutes)", 900)
    ]
    # the rate is a parameter: what a deployment overrides, the local stack runs
    stack = resolve_template(
        TEMPLATE,
        stack_name="cmtest",
        parameter_overrides={**LOCAL_IMAGES, "ReconcileRate": "rate(1 hour)"},
    )
    assert stack.schedules[0].period_seconds == 3600


@pytest.mark.parametrize(
    ("expression", "seconds"),
    [("rate(1 minute)", 60), ("rate(15 minutes)", 900), ("rate(2 hours)", 7200),
     ("rate(1 day)", 86_400)],
)  # fmt: skip
def test_rates_are_read_as_eventbridge_reads_them(expression: str, seconds: float) -> None:
    assert rate_seconds(expression) == seconds


@pytest.mark.parametrize("expression", ["cron(0 12 * * ? *)", "rate(0 minutes)", "rate(5 sec)"])
def test_what_the_local_stack_cannot_run_is_refused(expression: str) -> None:
    with pytest.raises(TemplateError, match="rate"):
        rate_seconds(expression)


class RecordingHost:
    """Stands in for the FunctionHost: records each invocation."""

    def __init__(self, wanted: int) -> None:
        self.invocations: list[tuple[str, dict[str, Any]]] = []
        self.enough = threading.Event()
        self.wanted = wanted

    def invoke(self, logical_id: str, event: dict[str, Any]) -> None:
        self.invocations.append((logical_id, event))
        if len(self.invocations) >= self.wanted:
            self.enough.set()


def test_the_scheduler_invokes_the_function_with_scheduled_events_until_stopped() -> None:
    stack = resolve_template(TEMPLATE, stack_name="cmtest", parameter_overrides=LOCAL_IMAGES)
    host = RecordingHost(wanted=2)
    router = EventRouter(stack, host, events=None, sqs=None, queue_urls={})  # type: ignore[arg-type]
    # GIVEN a short period injected for the test WHEN the schedules run
    router.setup_schedules(period_seconds=0.01)
    try:
        assert host.enough.wait(timeout=30), "the schedule never fired"
    finally:
        router.stop()
    # THEN the reconciler got EventBridge's Scheduled Event, naming its rule
    function, event = host.invocations[0]
    assert function == "ReconcileFunction"
    assert (event["source"], event["detail-type"], event["detail"]) == (
        "aws.events",
        "Scheduled Event",
        {},
    )
    assert event["resources"][0].endswith(":rule/cmtest-ReconcileFunctionSweep")
    # AND stopping the router stops the timer
    assert not any(t.is_alive() for t in router._threads)
