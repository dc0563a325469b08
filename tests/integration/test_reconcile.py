"""The reconciler on the local stack: a run left stuck finishes or fails with a reason.

A stack of its own, whose bounds are 0 s (``StuckRunSeconds``, ``FailStuckRunSeconds``):
every run in flight is examined, and one that cannot move on is failed at once. Its
schedule keeps the template's rate (15 minutes), so it never fires during these tests:
they trigger the reconcile function themselves, as its schedule would, and otherwise
drive the stack only through its outputs and boto3.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from citymodels.registry import FINAL, PROCESSING, Registry, Run
from citymodels_devkit.local.lambdas import scheduled_event
from tests.conftest import raw_rows, upload
from tests.integration.conftest import Running, start_stack

STACK = "cm-rec"


@pytest.fixture(scope="module")
def stuck_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    stack = start_stack(
        tmp_path_factory.mktemp("reconcile-stack"),
        stack_name=STACK,
        parameter_overrides={"StuckRunSeconds": "0", "FailStuckRunSeconds": "0"},
    )
    try:
        yield Running(stack, stack.outputs)
    finally:
        stack.stop()


def sweep(running: Running) -> list[dict[str, Any]]:
    """Invoke the reconcile function with its schedule's event; return its outcomes."""
    assert running.stack.host is not None and running.stack.stack is not None
    (schedule,) = running.stack.stack.schedules
    result = running.stack.host.invoke(schedule.function, scheduled_event(STACK, schedule))
    return list(result["outcomes"])


def registry(running: Running) -> Registry:
    return Registry(running.outputs["RegistryTable"], client=running.client("dynamodb"))


def wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout} s")
        time.sleep(0.1)


def processing_status(sagemaker: Any, name: str) -> str:
    """The job's status; "" before it exists (its name is on the run before the create)."""
    try:
        return str(sagemaker.describe_processing_job(ProcessingJobName=name)["ProcessingJobStatus"])
    except ClientError:
        return ""


def test_a_run_whose_job_completion_event_was_dropped_is_published(
    stuck_stack: Running,
) -> None:
    events = stuck_stack.client("events")
    rule = f"{STACK}-TrainFunctionProcessingJobStateChange"
    targets = events.list_targets_by_rule(Rule=rule)["Targets"]
    # GIVEN the processing jobs' state changes are dropped (the rule has no target)
    events.remove_targets(Rule=rule, Ids=[t["Id"] for t in targets])
    try:
        key = stuck_stack.upload("Austin_TX", upload(raw_rows(300, seed=3)))
        runs = registry(stuck_stack)
        wait_for(
            lambda: any(r.processing_job for r in runs.list_runs("Austin_TX")),
            "the upload's processing job",
        )
        (run,) = runs.list_runs("Austin_TX")
        sagemaker = stuck_stack.client("sagemaker")
        wait_for(
            lambda: processing_status(sagemaker, run.processing_job) == "Completed",
            "the processing job",
        )
        stuck_stack.stack.wait_idle()
        # THEN the run is stuck in PROCESSING: nothing will ever move it
        assert runs.get_run("Austin_TX", run.run).status == PROCESSING
    finally:
        events.put_targets(Rule=rule, Targets=targets)
    # WHEN the reconciler sweeps
    outcomes = sweep(stuck_stack)
    # THEN it starts the training job, as the train function would have
    assert [(o["action"], o["run"]) for o in outcomes] == [("started", run.run)], outcomes
    # AND the rest of the pipeline carries the run to the end: it is published
    final = stuck_stack.wait_upload("Austin_TX", key)
    assert final["status"] == "PUBLISHED", final


def test_a_run_that_never_got_a_job_fails_with_the_reason(stuck_stack: Running) -> None:
    # GIVEN a run recorded by an onboard that died before naming its job (as a crash
    # or a restart of the stack leaves one)
    runs = registry(stuck_stack)
    run = "20261204T120000000Z-0062E99A88DC4AAAAAAAAAAAAAAAAAAA"
    runs.create_run(Run("Denver_CO", run, "raw/Denver_CO/houses.csv", PROCESSING))
    # WHEN the reconciler sweeps (past the hard bound: 0 s here)
    outcomes = sweep(stuck_stack)
    # THEN the run is FAILED, and its reason says why
    assert [(o["action"], o["run"]) for o in outcomes] == [("failed", run)], outcomes
    record = runs.get_run("Denver_CO", run)
    assert record.status in FINAL and record.status == "FAILED"
    assert "no processing job was ever named" in record.reason
    # AND the next sweep finds nothing left in flight
    assert sweep(stuck_stack) == []


def test_the_stack_runs_the_templates_schedule(tmp_path: Path) -> None:
    # GIVEN a stack whose schedules run every 0.2 s instead of the template's rate, and
    # a run stuck without a job
    stack = start_stack(
        tmp_path,
        stack_name="cm-sched",
        parameter_overrides={"StuckRunSeconds": "0", "FailStuckRunSeconds": "0"},
        schedule_period_seconds=0.2,
    )
    try:
        running = Running(stack, stack.outputs)
        runs = registry(running)
        run = "20261204T120000000Z-0062E99A88DC4BBBBBBBBBBBBBBBBBBB"
        runs.create_run(Run("Denver_CO", run, "raw/Denver_CO/houses.csv", PROCESSING))
        # THEN the schedule's reconciler fails it, with nobody invoking anything
        wait_for(lambda: runs.get_run("Denver_CO", run).status == "FAILED", "the schedule")
    finally:
        stack.stop()
