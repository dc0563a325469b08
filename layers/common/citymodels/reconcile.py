"""The reconciler: runs that never end, and failures that can be tried again (issue 12).

Events get lost: a job's state change whose run the registry cannot find, a function
that failed past its retries, a job that was never created. The reconcile function
(template ``ReconcileFunction``, on an EventBridge schedule) calls
:meth:`Reconciler.sweep`, which

1. takes the runs PROCESSING or TRAINING for longer than ``stuck_after_seconds``
   (a Query of the registry's sparse ``watched-runs`` index, longest first, never a
   scan), describes each one's job and decides, always through the pipeline's own
   methods (nothing here repeats their logic):

   | what it finds | decision |
   |---|---|
   | the job runs, within its own ``MaxRuntimeInSeconds`` | left alone (``running``) |
   | the job runs, 15 minutes past that limit | FAILED (SageMaker would have stopped it) |
   | the job ended (Completed, Failed, Stopped) | handled as its lost state-change event would have been: :meth:`~citymodels.pipeline.Pipeline.on_processing_state` / ``on_training_state`` |
   | no job, the run waits for SageMaker capacity | left to the capacity retry |
   | no job | created again by ``start_processing`` / ``start_training``, the retry function's idempotent path; an error other than throttling fails the run with it |
   | no job named (onboard never got that far) | left to the replay of its upload event (below) |
   | still stuck past ``fail_after_seconds`` | FAILED, with the reason |
   | no longer in the status the index lists | index attributes written again |

2. replays up to ``max_replays`` messages of the FailureQueue: Lambda OnFailure records
   of onboard, train and publish (the original event is in ``requestPayload``), events
   EventBridge could not deliver, and capacity retry messages redriven there. Each goes
   to the pipeline method its function would have called; a message is deleted once
   that succeeds, and otherwise stays, hidden for longer each time it fails again.

Every decision is an :class:`~citymodels.pipeline.Outcome` whose metrics the handler
publishes: ``StuckRuns`` counts the runs found stuck (the ``StuckRunsAlarm`` fires on
it), ``RunsReconciled`` those moved on, ``StuckRunFailed`` those failed,
``ReconcileErrors`` those whose decision raised (the sweep goes on with the others),
``FailureReplayed`` / ``ReplayFailed`` / ``ReplaySkipped`` the FailureQueue messages.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from botocore.exceptions import ClientError

from citymodels.handlers import ObjectCreated, ProcessingJobStateChange, TrainingJobStateChange
from citymodels.pipeline import (
    MAX_REASON_CHARS,
    TERMINAL_JOB_STATUSES,
    WAITING_FOR_CAPACITY,
    Action,
    Outcome,
    Pipeline,
    PipelineError,
    RetryMessage,
)
from citymodels.registry import FAILED, IN_PROGRESS, PROCESSING, Run, WatchedRun
from citymodels.settings import ConfigurationError

MAX_RUNS_PER_SWEEP = 25
"""Runs decided per sweep, longest stuck first (a publish runs the quality gate)."""
MAX_REPLAYS_PER_SWEEP = 10
JOB_MARGIN_SECONDS = 900
"""How long past its own ``MaxRuntimeInSeconds`` a running job may go before it is stuck
(SageMaker stops it at the limit; uploading its output takes a while)."""
SWEEP_RESERVE_SECONDS = 300.0
"""No new run or message is started with less time than this left in the invocation
(a publish, with its quality gate, may take the publish function's timeout)."""
MAX_HIDE_SECONDS = 39_600
"""11 hours: SQS hides a message at most 12 hours from its receive, this sweep included."""
RETRYABLE_START_ERRORS = frozenset(
    {"ThrottlingException", "Throttling", "ServiceUnavailable", "InternalFailure"}
)
"""CreateXJob errors the next sweep tries again; any other fails the run at once."""
_NOT_FOUND = re.compile(r"could not find|not found|does not exist", re.IGNORECASE)

PROCESSING_STATE_CHANGE = "SageMaker Processing Job State Change"
TRAINING_STATE_CHANGE = "SageMaker Training Job State Change"
OBJECT_CREATED = "Object Created"


class UnknownFailure(PipelineError):
    """A FailureQueue message that is no event of this pipeline (left for a person)."""

    code = "unknown_failure"


@dataclass(frozen=True)
class ReconcileSettings:
    """The reconciler's bounds (template parameters ``StuckRunSeconds``...).

    Attributes
    ----------
    stuck_after_seconds
        A run in PROCESSING or TRAINING longer than this is examined
        (``STUCK_RUN_SECONDS``): more than a job's ``MaxRuntimeInSeconds``.
    fail_after_seconds
        A run still stuck after this long is FAILED (``FAIL_STUCK_RUN_SECONDS``): more
        than the capacity retries' day, so a run waiting for capacity is never failed
        here first.
    failure_queue_url
        The FailureQueue (``FAILURE_QUEUE_URL``).
    max_runs, max_replays
        Per sweep.
    replay_visibility_seconds
        How long a received message stays hidden (at least the function's timeout);
        doubled for every earlier receive of a message that fails again.
    """

    stuck_after_seconds: float
    fail_after_seconds: float
    failure_queue_url: str
    max_runs: int = MAX_RUNS_PER_SWEEP
    max_replays: int = MAX_REPLAYS_PER_SWEEP
    replay_visibility_seconds: int = 900

    def __post_init__(self) -> None:
        if not 0 <= self.stuck_after_seconds <= self.fail_after_seconds:
            raise ConfigurationError(
                f"need 0 <= STUCK_RUN_SECONDS ({self.stuck_after_seconds:g}) "
                f"<= FAIL_STUCK_RUN_SECONDS ({self.fail_after_seconds:g})"
            )


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime) -> str:
    """The registry's time format (:func:`citymodels.registry.now_iso`)."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _not_found(err: ClientError) -> bool:
    """Whether a Describe*Job error says the job does not exist (SageMaker answers
    ValidationException "Could not find ..."; no modelled exception)."""
    code, message = _error_code(err), str(err.response.get("Error", {}).get("Message", ""))
    return code == "ResourceNotFound" or (
        code == "ValidationException" and bool(_NOT_FOUND.search(message))
    )


class Reconciler:
    """Finds stuck runs and moves them on or fails them; replays the FailureQueue.

    Parameters
    ----------
    pipeline
        The pipeline whose methods every decision goes through.
    settings
        The bounds and the FailureQueue.
    sqs
        The SQS client the FailureQueue is read with (default: the pipeline's).
    clock
        The current time (UTC); tests pass their own.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        settings: ReconcileSettings,
        *,
        sqs: Any | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self._sqs = sqs
        self._clock = clock

    @property
    def sqs(self) -> Any:
        """The SQS client."""
        return self._sqs if self._sqs is not None else self.pipeline.sqs

    def sweep(self, *, time_left: Callable[[], float] | None = None) -> list[Outcome]:
        """Decide every stuck run, then replay the FailureQueue; return the outcomes.

        Parameters
        ----------
        time_left
            Seconds left in the invocation; nothing new starts with less than
            :data:`SWEEP_RESERVE_SECONDS` (the next sweep carries on).
        """
        outcomes: list[Outcome] = []
        for watched in self.stuck_runs():
            if _out_of_time(time_left):
                return outcomes
            try:
                outcomes.append(self.reconcile(watched))
            except Exception as err:  # one run's trouble must not block the others for good
                outcomes.append(self._error(watched, err))
        return outcomes + self.replay_failures(time_left=time_left)

    # -- stuck runs ------------------------------------------------------------------

    def stuck_runs(self) -> list[WatchedRun]:
        """Return the runs in flight longer than the bound, longest first (at most ``max_runs``)."""
        cutoff = _iso(self._clock() - timedelta(seconds=self.settings.stuck_after_seconds))
        found: list[WatchedRun] = []
        for status in IN_PROGRESS:
            for number, watched in enumerate(
                self.pipeline.registry.watched_runs(status, before=cutoff)
            ):
                if number >= self.settings.max_runs:
                    break
                found.append(watched)
        return sorted(found, key=lambda w: w.since)[: self.settings.max_runs]

    def reconcile(self, watched: WatchedRun) -> Outcome:
        """Decide one run found in flight past the bound (the table in the module's docstring)."""
        registry = self.pipeline.registry
        record = registry.get_run(watched.city, watched.run)
        if record.status != watched.status:
            # The index lags the table (the run moved on since), or a status was written
            # without its index attributes: write them for the run's status as it is.
            registry.update_run(
                record.city, record.run, expected_status=[record.status], status=record.status
            )
            return Outcome.of_run(
                Action.STALE, f"{record.city} run {record.run} is {record.status} now", record
            )
        kind = "processing" if record.status == PROCESSING else "training"
        name = record.processing_job if kind == "processing" else record.training_job
        age = (self._clock() - _parse_iso(watched.since)).total_seconds()
        if not name:
            return self._stuck(
                record,
                age,
                "no processing job was ever named for it (its upload event failed; the "
                "FailureQueue replay tries it again)",
            )
        described = self._describe(kind, name)
        if described is None:
            return self._missing_job(record, kind, name, age)
        status = str(described[f"{kind.capitalize()}JobStatus"])
        if status in TERMINAL_JOB_STATUSES:
            # Its state-change event was lost, or found no run (a job named on the run
            # before naming became one transaction with JOB#): map it (idempotent, the
            # run keeps its status), then handle the event.
            registry.name_job(
                record.city,
                record.run,
                name,
                expected_status=[record.status],
                **{f"{kind}_job": name},
            )
            handle = (
                self.pipeline.on_processing_state
                if kind == "processing"
                else self.pipeline.on_training_state
            )
            return handle(name, status).count("StuckRuns").count("RunsReconciled")
        limit = float(described.get("StoppingCondition", {}).get("MaxRuntimeInSeconds", 0))
        started = described.get(f"{kind.capitalize()}StartTime") or described.get("CreationTime")
        if isinstance(started, datetime) and limit:
            running = (self._clock() - started).total_seconds()
            if running <= limit + JOB_MARGIN_SECONDS:
                return Outcome.of_run(
                    Action.RUNNING,
                    f"{kind} job {name} is {status}, {running:.0f} s of its {limit:.0f} s",
                    record,
                    job_name=name,
                )
            # SageMaker stops a job at its limit: one still running long after will not
            # end by itself (e.g. a local job service restarted under it).
            return self._fail(
                record,
                f"{kind} job {name} is still {status} {running - limit:.0f} s past its "
                f"MaxRuntimeInSeconds ({limit:.0f} s)",
                name,
            )
        return self._stuck(record, age, f"{kind} job {name} is {status} with no time limit", name)

    def _error(self, watched: WatchedRun, err: Exception) -> Outcome:
        """A run whose decision raised: stuck until the hard bound, then FAILED with the error.

        Runs are taken longest stuck first: one that always raises would otherwise take
        a place in every sweep for ever.
        """
        why = f"the reconciler could not decide it: {type(err).__name__}: {err}"
        age = (self._clock() - _parse_iso(watched.since)).total_seconds()
        outcome = Outcome(
            Action.STUCK,
            f"{watched.city} run {watched.run} is stuck in {watched.status}: {why}",
            city=watched.city,
            run=watched.run,
            status=watched.status,
        )
        if age > self.settings.fail_after_seconds:
            reason = f"stuck in {watched.status} for {age / 3600:.1f} h: {why}"
            if self._mark_failed(watched.city, watched.run, watched.status, reason):
                outcome = Outcome(
                    Action.FAILED, reason, city=watched.city, run=watched.run, status=FAILED
                ).count("StuckRunFailed")
        return outcome.count("StuckRuns").count("ReconcileErrors")

    def _describe(self, kind: str, name: str) -> Mapping[str, Any] | None:
        """The job's description, or None when SageMaker has no such job."""
        sagemaker = self.pipeline.sagemaker
        try:
            if kind == "processing":
                answer: Mapping[str, Any] = sagemaker.describe_processing_job(
                    ProcessingJobName=name
                )
            else:
                answer = sagemaker.describe_training_job(TrainingJobName=name)
        except ClientError as err:
            if _not_found(err):
                return None
            raise
        return answer

    def _missing_job(self, record: Run, kind: str, name: str, age: float) -> Outcome:
        """The run names a job SageMaker does not have: start it (again), or wait, or fail."""
        if (
            record.reason.startswith(WAITING_FOR_CAPACITY)
            and age <= self.settings.fail_after_seconds
        ):
            return Outcome.of_run(
                Action.WAITING_FOR_CAPACITY,
                f"{kind} job {name} waits for capacity; the capacity retry has it",
                record,
                job_name=name,
            )
        if age > self.settings.fail_after_seconds:
            return self._stuck(record, age, f"{kind} job {name} was never created", name)
        start = (
            self.pipeline.start_processing if kind == "processing" else self.pipeline.start_training
        )
        try:
            outcome = start(record.city, record.run)
        except PipelineError as err:
            # SageMaker refused the create (a pipeline that raises rather than decides):
            # the next sweep tries a throttled create again; anything else never works.
            cause = err.__cause__
            code = _error_code(cause) if isinstance(cause, ClientError) else ""
            if code in RETRYABLE_START_ERRORS:
                return self._stuck(record, age, err.message, name)
            return self._fail(record, err.message, name)
        return outcome.count("StuckRuns").count("RunsReconciled")

    def _stuck(self, record: Run, age: float, why: str, job_name: str = "") -> Outcome:
        """A run that cannot move on now: FAILED past the hard bound, else left for later."""
        if age > self.settings.fail_after_seconds:
            return self._fail(
                record,
                f"stuck in {record.status} for {age / 3600:.1f} h "
                f"(limit {self.settings.fail_after_seconds / 3600:.1f} h): {why}",
                job_name,
            )
        return Outcome.of_run(
            Action.STUCK,
            f"{record.city} run {record.run} is stuck in {record.status}: {why}",
            record,
            job_name=job_name,
            details={"age_seconds": round(age)},
        ).count("StuckRuns")

    def _mark_failed(self, city: str, run: str, status: str, reason: str) -> bool:
        """FAILED with ``reason`` if the run is still ``status``; whether it was."""
        updated = self.pipeline.registry.update_run(
            city, run, expected_status=[status], status=FAILED, reason=reason[:MAX_REASON_CHARS]
        )
        return updated is not None

    def _fail(self, record: Run, reason: str, job_name: str) -> Outcome:
        if not self._mark_failed(record.city, record.run, record.status, reason):
            current = self.pipeline.registry.get_run(record.city, record.run)
            return Outcome.of_run(Action.STALE, f"the run is {current.status} now", current)
        return (
            Outcome.of_run(Action.FAILED, reason, record, status=FAILED, job_name=job_name)
            .count("StuckRuns")
            .count("StuckRunFailed")
        )

    # -- the FailureQueue ------------------------------------------------------------

    def replay_failures(self, *, time_left: Callable[[], float] | None = None) -> list[Outcome]:
        """Replay up to ``max_replays`` FailureQueue messages; return their outcomes."""
        settings = self.settings
        outcomes: list[Outcome] = []
        while len(outcomes) < settings.max_replays and not _out_of_time(time_left):
            answer = self.sqs.receive_message(
                QueueUrl=settings.failure_queue_url,
                MaxNumberOfMessages=min(10, settings.max_replays - len(outcomes)),
                WaitTimeSeconds=0,
                # hidden while this sweep works on it; received again by a later one
                VisibilityTimeout=settings.replay_visibility_seconds,
                AttributeNames=["ApproximateReceiveCount"],
            )
            messages = answer.get("Messages", [])
            if not messages:
                break
            outcomes += [self._replay_message(message) for message in messages]
        return outcomes

    def _replay_message(self, message: Mapping[str, Any]) -> Outcome:
        message_id = str(message.get("MessageId", ""))
        try:
            outcome = self.replay(str(message["Body"]))
        except UnknownFailure as err:
            self._hide(message, MAX_HIDE_SECONDS)  # a person must look: out of the way
            return Outcome(
                Action.IGNORED,
                f"FailureQueue message {message_id} left for a person: {err.message}",
                details={"message_id": message_id},
            ).count("ReplaySkipped")
        except Exception as err:  # it stays queued, hidden a while; the sweep goes on
            receives = int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1))
            self._hide(message, self.settings.replay_visibility_seconds * 2 ** min(receives, 6))
            return Outcome(
                Action.REPLAY_FAILED,
                f"FailureQueue message {message_id} failed again (receive {receives}): "
                f"{type(err).__name__}: {err}",
                details={"message_id": message_id},
            ).count("ReplayFailed")
        self.sqs.delete_message(
            QueueUrl=self.settings.failure_queue_url, ReceiptHandle=message["ReceiptHandle"]
        )
        outcome.details["replayed_message_id"] = message_id
        return outcome.count("FailureReplayed")

    def _hide(self, message: Mapping[str, Any], seconds: int) -> None:
        self.sqs.change_message_visibility(
            QueueUrl=self.settings.failure_queue_url,
            ReceiptHandle=message["ReceiptHandle"],
            VisibilityTimeout=min(seconds, MAX_HIDE_SECONDS),
        )

    def replay(self, body: str) -> Outcome:
        """Handle a FailureQueue message's event as the function it failed in would have.

        Raises
        ------
        UnknownFailure
            The message is no event of this pipeline.
        """
        try:
            data = json.loads(body)
        except ValueError as err:
            raise UnknownFailure(f"not JSON: {body[:200]!r}") from err
        if not isinstance(data, dict):
            raise UnknownFailure(f"not an event: {body[:200]!r}")
        if "kind" in data and "job_name" in data:  # redriven from the CapacityRetryQueue
            return self.pipeline.resume(RetryMessage.from_json(body))
        # A Lambda OnFailure record carries the event it failed on; EventBridge's
        # dead letters are the event itself.
        payload = data.get("requestPayload") if "requestContext" in data else data
        event: dict[str, Any] = payload if isinstance(payload, dict) else {}
        detail_type = event.get("detail-type")
        if detail_type == OBJECT_CREATED:
            return self.pipeline.onboard(ObjectCreated(event).upload)
        if detail_type == PROCESSING_STATE_CHANGE:
            change = ProcessingJobStateChange(event)
            return self.pipeline.on_processing_state(change.job_name, change.status)
        if detail_type == TRAINING_STATE_CHANGE:
            training = TrainingJobStateChange(event)
            return self.pipeline.on_training_state(training.job_name, training.status)
        raise UnknownFailure(f"no pipeline event (detail-type {detail_type!r}): {body[:200]!r}")


def _out_of_time(time_left: Callable[[], float] | None) -> bool:
    return time_left is not None and time_left() < SWEEP_RESERVE_SECONDS
