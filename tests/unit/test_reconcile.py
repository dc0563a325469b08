"""The reconciler (citymodels.reconcile): every decision on a stuck run, and the
FailureQueue's replay, on the pipeline's moto world (tests/unit/test_pipeline.py).

Time passes through the reconciler's clock: ``world_after(seconds)`` makes a reconciler
that sees the registry's runs that much older.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from citymodels.pipeline import Action, Outcome
from citymodels.reconcile import Reconciler, ReconcileSettings
from citymodels.registry import FAILED, PROCESSING, PUBLISHED, TRAINING
from tests.aws import TABLE, Aws, AwsError, load_event
from tests.unit.test_pipeline import CITY, World, body_of, make_world

STUCK_AFTER = 5400.0
FAIL_AFTER = 129_600.0
THROTTLED = AwsError("ThrottlingException", 400, "Rate exceeded")
INVALID = AwsError("ValidationException", 400, "1 validation error detected: RoleArn")


@pytest.fixture
def world(aws: Aws, tmp_path: Path) -> World:
    return make_world(aws, tmp_path)


def reconciler(world: World, seconds_later: float) -> Reconciler:
    """A reconciler whose clock reads ``seconds_later`` than now."""
    later = datetime.now(UTC) + timedelta(seconds=seconds_later)
    return Reconciler(
        world.pipeline,
        ReconcileSettings(STUCK_AFTER, FAIL_AFTER, world.aws.failure_queue_url),
        sqs=world.aws.sqs,
        clock=lambda: later,
    )


def sweep(world: World, seconds_later: float) -> list[Outcome]:
    return reconciler(world, seconds_later).sweep()


def forget_job(world: World, job: str) -> None:
    """What a redelivery of the upload after its job was named did: no JOB# mapping."""
    world.aws.dynamodb.delete_item(
        TableName=TABLE, Key={"pk": {"S": f"JOB#{job}"}, "sk": {"S": "JOB"}}
    )


def status_of(world: World, run: str) -> tuple[str, str]:
    record = world.registry.get_run(CITY, run)
    return record.status, record.reason


def queued(world: World) -> list[dict[str, Any]]:
    """What the FailureQueue holds, visible or hidden."""
    attributes = world.aws.sqs.get_queue_attributes(
        QueueUrl=world.aws.failure_queue_url, AttributeNames=["All"]
    )["Attributes"]
    return [
        {
            "visible": int(attributes["ApproximateNumberOfMessages"]),
            "hidden": int(attributes["ApproximateNumberOfMessagesNotVisible"]),
        }
    ]


def send_failure(world: World, body: dict[str, Any]) -> None:
    world.aws.sqs.send_message(QueueUrl=world.aws.failure_queue_url, MessageBody=json.dumps(body))


def on_failure_record(event: dict[str, Any], function: str) -> dict[str, Any]:
    """Lambda's OnFailure destination record for ``event``."""
    return {
        "version": "1.0",
        "timestamp": "2026-12-04T18:00:00.000Z",
        "requestContext": {
            "requestId": "e0c1",
            "functionArn": f"arn:aws:lambda:us-east-1:123456789012:function:{function}:$LATEST",
            "condition": "RetriesExhausted",
            "approximateInvokeCount": 3,
        },
        "requestPayload": event,
        "responseContext": {"statusCode": 200, "functionError": "Unhandled"},
        "responsePayload": {"errorMessage": "Task timed out after 300.00 seconds"},
    }


# -- which runs ----------------------------------------------------------------------


def test_runs_within_the_bound_are_not_examined(world: World) -> None:
    started = world.upload(body_of(1))
    assert sweep(world, STUCK_AFTER - 60) == []
    assert status_of(world, started.run) == (PROCESSING, "")


# -- a job that ended: its lost event is handled ---------------------------------------


def test_a_completed_processing_job_whose_event_was_dropped_moves_on_to_training(
    world: World,
) -> None:
    # GIVEN a run whose job was never mapped to it (the onboard redelivery bug), so the
    # job's Completed event finds no run and is dropped
    started = world.upload(body_of(1))
    forget_job(world, started.job_name)
    world.write_processed(CITY, started.run)
    dropped = world.pipeline.on_processing_state(started.job_name, "Completed")
    assert dropped.action is Action.IGNORED
    # WHEN the reconciler sweeps past the bound
    (outcome,) = sweep(world, STUCK_AFTER + 60)
    # THEN the run is TRAINING with its training job started, as the train function does
    assert outcome.action is Action.STARTED
    assert status_of(world, started.run)[0] == TRAINING
    [request] = world.sagemaker.training_requests
    assert request["TrainingJobName"] == started.job_name
    assert outcome.metrics == {"TrainingJobStarted": 1, "StuckRuns": 1, "RunsReconciled": 1}
    # AND the job's own events find the run from now on
    assert world.registry.run_for_job(started.job_name) is not None


def test_a_completed_training_job_whose_event_was_lost_is_published(world: World) -> None:
    started = world.upload(body_of(1))
    world.finish_processing(CITY, started.run)
    world.write_model(CITY, started.run)  # the job completes; its event never arrives
    (outcome,) = sweep(world, STUCK_AFTER + 60)
    assert outcome.action is Action.PUBLISHED
    assert status_of(world, started.run)[0] == PUBLISHED
    assert world.registry.get_city(CITY).current == started.run
    assert outcome.metrics["ModelPublished"] == 1


def test_a_failed_job_whose_event_was_lost_fails_the_run_with_its_reason(world: World) -> None:
    started = world.upload(body_of(1))
    world.finish_processing(CITY, started.run)
    world.sagemaker.descriptions[started.job_name] = {
        "TrainingJobStatus": "Failed",
        "FailureReason": "ClientError: Unable to read data channel 'train'",
    }
    (outcome,) = sweep(world, STUCK_AFTER + 60)
    status, reason = status_of(world, started.run)
    assert (outcome.action, status) == (Action.FAILED, FAILED)
    assert "Unable to read data channel 'train'" in reason
    assert outcome.metrics["TrainingJobFailed"] == 1


# -- a job still running ---------------------------------------------------------------


def running(world: World, job: str, *, started_seconds_ago: float) -> None:
    world.sagemaker.descriptions[job] = {
        "ProcessingJobStatus": "InProgress",
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "ProcessingStartTime": datetime.now(UTC) - timedelta(seconds=started_seconds_ago),
    }


def test_a_job_running_within_its_own_limit_is_left_alone(world: World) -> None:
    started = world.upload(body_of(1))
    # the run waited long (e.g. for capacity) before its job started 10 minutes ago
    running(world, started.job_name, started_seconds_ago=600 - (STUCK_AFTER + 60))
    (outcome,) = sweep(world, STUCK_AFTER + 60)
    assert outcome.action is Action.RUNNING
    assert outcome.metrics == {}  # not stuck: the alarm stays quiet
    assert status_of(world, started.run) == (PROCESSING, "")


def test_a_job_running_long_past_its_limit_fails_the_run_with_the_reason(world: World) -> None:
    # GIVEN a job that says InProgress 80 minutes after it started, with a 60-minute limit
    # (SageMaker would have stopped it: e.g. a local job service restarted under it)
    started = world.upload(body_of(1))
    running(world, started.job_name, started_seconds_ago=4800 - (STUCK_AFTER + 60))
    (failed,) = sweep(world, STUCK_AFTER + 60)
    status, reason = status_of(world, started.run)
    assert (failed.action, status) == (Action.FAILED, FAILED)
    assert f"processing job {started.job_name} is still InProgress 1200 s past" in reason
    assert failed.metrics == {"StuckRuns": 1, "StuckRunFailed": 1}


# -- a job that was never created --------------------------------------------------------


def training_never_created(world: World) -> Outcome:
    """A run TRAINING whose training job was never created: what a train function leaves
    that recorded TRAINING and then failed (or crashed) on CreateTrainingJob."""
    started = world.upload(body_of(1))
    world.write_processed(CITY, started.run)
    world.registry.update_run(
        CITY,
        started.run,
        expected_status=[PROCESSING],
        status=TRAINING,
        training_job=started.job_name,
    )
    return started


def test_a_training_job_never_created_is_created_again(world: World) -> None:
    started = training_never_created(world)
    # WHEN the reconciler sweeps THEN it creates the job through the retry's path
    (outcome,) = sweep(world, STUCK_AFTER + 60)
    assert outcome.action is Action.STARTED
    assert [r["TrainingJobName"] for r in world.sagemaker.training_requests] == [started.job_name]
    assert status_of(world, started.run) == (TRAINING, "")


def test_a_job_refused_as_invalid_fails_the_run_with_the_error(world: World) -> None:
    started = training_never_created(world)
    world.sagemaker.create_errors = [INVALID]
    (outcome,) = sweep(world, STUCK_AFTER + 60)
    status, reason = status_of(world, started.run)
    assert (outcome.action, status) == (Action.FAILED, FAILED)
    assert "ValidationException: 1 validation error detected: RoleArn" in reason


def test_a_job_still_throttled_is_not_failed_until_the_hard_bound(world: World) -> None:
    started = training_never_created(world)
    world.sagemaker.create_errors = [THROTTLED]
    sweep(world, STUCK_AFTER + 60)
    # the run waits (for the next sweep, or the capacity retry): not FAILED for a throttle
    assert status_of(world, started.run)[0] == TRAINING
    world.sagemaker.create_errors = [THROTTLED]
    (outcome,) = sweep(world, FAIL_AFTER + 60)
    status, reason = status_of(world, started.run)
    assert (outcome.action, status) == (Action.FAILED, FAILED)
    assert started.job_name in reason and "stuck in TRAINING" in reason


def test_a_run_waiting_for_capacity_is_left_to_the_capacity_retry(world: World) -> None:
    world.sagemaker.capacity_errors = 1
    waiting = world.upload(body_of(1))
    assert waiting.action is Action.WAITING_FOR_CAPACITY
    (outcome,) = sweep(world, STUCK_AFTER + 60)
    assert outcome.action is Action.WAITING_FOR_CAPACITY
    assert outcome.metrics == {}
    assert world.sagemaker.processing_requests == []  # no second retry chain
    assert len(world.sqs.sent) == 1


def test_a_run_whose_job_was_never_named_fails_past_the_hard_bound(world: World) -> None:
    # GIVEN onboard recorded the run, then failed before naming its job (its event
    # waits in the FailureQueue)
    from citymodels.registry import Run

    run = "20261125T010000000Z-0062E99A88DC40000000000000000000"
    world.registry.create_run(Run(CITY, run, f"raw/{CITY}/houses.csv", PROCESSING))
    (outcome,) = sweep(world, STUCK_AFTER + 60)
    assert (outcome.action, status_of(world, run)[0]) == (Action.STUCK, PROCESSING)
    (outcome,) = sweep(world, FAIL_AFTER + 60)
    status, reason = status_of(world, run)
    assert (outcome.action, status) == (Action.FAILED, FAILED)
    assert "no processing job was ever named" in reason


def test_a_run_that_cannot_be_decided_does_not_stop_the_sweep_and_fails_in_the_end(
    world: World,
) -> None:
    from citymodels.registry import Run

    # GIVEN the oldest run names a job SageMaker refuses to describe, and a newer run
    # whose training job completed without its event
    bad = "20261125T000000000Z-0062E99A88DC40000000000000000000"
    world.registry.create_run(
        Run("Boston_MA", bad, "raw/Boston_MA/x.csv", PROCESSING, processing_job="cm-cmtest-x-1")
    )
    world.sagemaker.describe_errors["cm-cmtest-x-1"] = AwsError(
        "AccessDeniedException", 400, "not authorized to perform sagemaker:DescribeProcessingJob"
    )
    started = world.upload(body_of(1))
    world.finish_processing(CITY, started.run)
    world.write_model(CITY, started.run)
    # WHEN the reconciler sweeps THEN the bad run is stuck, with the error, and the
    # other is published all the same
    stuck, published = sweep(world, STUCK_AFTER + 60)
    assert (stuck.action, stuck.run) == (Action.STUCK, bad)
    assert "AccessDeniedException" in stuck.message
    assert stuck.metrics == {"StuckRuns": 1, "ReconcileErrors": 1}
    assert (published.action, published.run) == (Action.PUBLISHED, started.run)
    # AND past the hard bound the bad run is FAILED with the error as its reason
    (failed,) = sweep(world, FAIL_AFTER + 60)
    record = world.registry.get_run("Boston_MA", bad)
    assert (failed.action, record.status) == (Action.FAILED, FAILED)
    assert "AccessDeniedException" in record.reason


# -- the FailureQueue ----------------------------------------------------------------------


def upload_event_for(world: World, body: bytes) -> dict[str, Any]:
    """The sample Object Created event, for ``body`` put at its key."""
    event = load_event("s3_object_created")
    key = event["detail"]["object"]["key"]
    put = world.aws.s3.put_object(Bucket=world.aws.bucket, Key=key, Body=body)
    event["detail"]["object"].update(size=len(body), etag=put["ETag"].strip('"'))
    event["detail"]["object"].pop("version-id")  # the test bucket is not versioned
    return event


def test_an_onboard_failure_is_replayed_and_leaves_the_queue(world: World) -> None:
    # GIVEN onboard failed past its retries on an upload: its OnFailure record is queued
    send_failure(world, on_failure_record(upload_event_for(world, body_of(1)), "onboard"))
    # WHEN the reconciler sweeps
    (outcome,) = sweep(world, 0)
    # THEN the upload's run started its processing job, as onboard would have
    assert outcome.action is Action.STARTED
    assert outcome.metrics["FailureReplayed"] == 1
    assert status_of(world, outcome.run)[0] == PROCESSING
    assert len(world.sagemaker.processing_requests) == 1
    # AND the message is gone
    assert queued(world) == [{"visible": 0, "hidden": 0}]


def test_a_lost_job_event_and_a_redriven_retry_are_replayed(world: World) -> None:
    # GIVEN a processing job's Completed event EventBridge could not deliver
    started = world.upload(body_of(1))
    world.write_processed(CITY, started.run)
    event = load_event("processing_completed")
    event["detail"]["ProcessingJobName"] = started.job_name
    send_failure(world, event)
    (outcome,) = sweep(world, 0)
    assert (outcome.action, status_of(world, started.run)[0]) == (Action.STARTED, TRAINING)
    # AND a capacity retry the retry function failed on five times (redriven)
    other = world.upload(body_of(2), minute=2, city="Boston_MA")
    world.aws.sqs.send_message(
        QueueUrl=world.aws.failure_queue_url,
        MessageBody=json.dumps(
            {"kind": "processing", "city": "Boston_MA", "run": other.run,
             "job_name": other.job_name, "retries": 3}
        ),
    )  # fmt: skip
    (resumed,) = sweep(world, 0)
    # its job exists already: the resume is harmless, and the message leaves the queue
    assert resumed.action is Action.ALREADY_STARTED
    assert queued(world) == [{"visible": 0, "hidden": 0}]


@pytest.mark.parametrize(
    ("body", "action", "metric"),
    [
        ("not json at all", Action.IGNORED, "ReplaySkipped"),
        (
            json.dumps({"detail-type": "Something Else", "detail": {}}),
            Action.IGNORED,
            "ReplaySkipped",
        ),
    ],
)
def test_what_is_no_pipeline_event_stays_in_the_queue_for_a_person(
    world: World, body: str, action: Action, metric: str
) -> None:
    world.aws.sqs.send_message(QueueUrl=world.aws.failure_queue_url, MessageBody=body)
    (outcome,) = sweep(world, 0)
    assert (outcome.action, outcome.metrics) == (action, {metric: 1})
    assert queued(world) == [{"visible": 0, "hidden": 1}]


def test_a_replay_that_fails_again_stays_in_the_queue(world: World) -> None:
    # GIVEN a training job's Completed event whose model is not in S3 (yet)
    started = world.upload(body_of(1))
    world.finish_processing(CITY, started.run)
    event = load_event("training_completed")
    event["detail"]["TrainingJobName"] = started.job_name
    send_failure(world, on_failure_record(event, "publish"))
    # WHEN it is replayed THEN the publish fails again, and the message stays, hidden
    (outcome,) = sweep(world, 0)
    assert outcome.action is Action.REPLAY_FAILED
    assert outcome.metrics == {"ReplayFailed": 1}
    assert "404" in outcome.message or "Not Found" in outcome.message
    assert queued(world) == [{"visible": 0, "hidden": 1}]
    assert status_of(world, started.run)[0] == TRAINING


def test_a_run_the_index_still_lists_under_an_old_status_is_taken_out(world: World) -> None:
    # GIVEN a run published by a write that left its index attributes behind
    started = world.upload(body_of(1))
    world.aws.dynamodb.update_item(
        TableName=TABLE,
        Key={"pk": {"S": f"CITY#{CITY}"}, "sk": {"S": f"RUN#{started.run}"}},
        UpdateExpression="SET #s = :p",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":p": {"S": PUBLISHED}},
    )
    assert world.registry.count_watched(PROCESSING) == 1
    # WHEN the reconciler finds it THEN it leaves the run as it is, and out of the index
    (outcome,) = sweep(world, STUCK_AFTER + 60)
    assert outcome.action is Action.STALE
    assert status_of(world, started.run)[0] == PUBLISHED
    assert world.registry.count_watched(PROCESSING) == 0


def test_a_sweep_replays_at_most_its_bound(world: World) -> None:
    for n in range(3):
        world.aws.sqs.send_message(QueueUrl=world.aws.failure_queue_url, MessageBody=f"x{n}")
    settings = ReconcileSettings(
        STUCK_AFTER, FAIL_AFTER, world.aws.failure_queue_url, max_replays=2
    )
    outcomes = Reconciler(world.pipeline, settings, sqs=world.aws.sqs).sweep()
    assert len(outcomes) == 2
    assert queued(world) == [{"visible": 1, "hidden": 2}]


def test_a_sweep_stops_starting_work_when_its_time_runs_out(world: World) -> None:
    world.upload(body_of(1))
    left: Callable[[], float] = lambda: 30.0  # noqa: E731 - under the reserve
    assert reconciler(world, STUCK_AFTER + 60).sweep(time_left=left) == []
