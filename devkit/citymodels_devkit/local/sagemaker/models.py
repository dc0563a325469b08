"""The backend of the local SageMaker job service: the jobs, their state and events.

:class:`JobService` holds every processing and training job (a :class:`_Job`, which
renders itself as ``Describe*`` and ``List*`` answer it, as moto's models do), runs
each in a worker process (:mod:`.runner`), and emits each change of status as
SageMaker's state-change event on the default event bus (``detail`` = the Describe
fields, times in epoch milliseconds):

- ``create`` answers ``ResourceInUse`` for a name already taken and, with
  ``max_active_jobs``, ``ResourceLimitExceeded`` past that many running jobs of a
  kind, records the job ``InProgress``, emits its first event and submits it;
- the worker's result ends the job ``Completed``, ``Failed`` or ``Stopped``;
- ``stop`` stops a job still waiting for a worker at once, a running one at the end
  of its current phase.

It is a participant of the local stack's :class:`~..persistence.StateStore`
(``export_state``, ``load_state``, ``replay``: every change is journaled), and a job
that was in progress when the stack stopped runs again when it starts.

The wire (which operation, the request checked, the answer's shape) is
:mod:`.responses`.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from citymodels_devkit.local.sagemaker.exceptions import (
    ResourceInUse,
    ResourceLimitExceeded,
    SageMakerError,
    ValidationException,
)
from citymodels_devkit.local.sagemaker.executors import DEFAULT_EXECUTORS, Executor, executor_for
from citymodels_devkit.local.sagemaker.runner import (
    COMPLETED,
    FAILED,
    PROCESSING,
    STOPPED,
    TRAINING,
    WorkerJob,
    WorkerPool,
    WorkerResult,
    crashed,
)

if TYPE_CHECKING:
    from citymodels_devkit.local.s3events import EventBus

__all__ = [
    "DEFAULT_ACCOUNT_ID",
    "DEFAULT_CREDENTIALS",
    "DEFAULT_REGION",
    "IN_PROGRESS",
    "JOB_PREFIX",
    "RESTARTED_MESSAGE",
    "STOPPING",
    "TERMINAL",
    "JobService",
]

logger = logging.getLogger(__name__)

IN_PROGRESS: Final = "InProgress"
STOPPING: Final = "Stopping"
TERMINAL: Final = frozenset({COMPLETED, FAILED, STOPPED})

DEFAULT_ACCOUNT_ID: Final = "123456789012"
DEFAULT_REGION: Final = "us-east-1"
DEFAULT_CREDENTIALS: Final = ("citymodels-local", "citymodels-local")

JOB_PREFIX: Final = {PROCESSING: "Processing", TRAINING: "Training"}
"""How the API names a kind of job (``ProcessingJobName``, ``TrainingJobStatus``...)."""

DETAIL_TYPES: Final = {
    PROCESSING: "SageMaker Processing Job State Change",
    TRAINING: "SageMaker Training Job State Change",
}

RESTARTED_MESSAGE: Final = "Restarting: the local stack stopped while the job ran"


@dataclass
class _Job:
    kind: str
    name: str
    arn: str
    request: dict[str, Any]
    created: float
    log_path: Path
    status: str = IN_PROGRESS
    secondary: str = "Starting"
    started: float | None = None
    ended: float | None = None
    modified: float = 0.0
    failure_reason: str | None = None
    exit_message: str | None = None
    model_artifacts: str | None = None
    final_metrics: list[dict[str, Any]] = field(default_factory=list)
    transitions: list[dict[str, Any]] = field(default_factory=list)
    future: Future[WorkerResult] | None = None
    job_dir: Path | None = None
    revision: int = 0

    def active(self) -> bool:
        return self.status in (IN_PROGRESS, STOPPING)

    def state(self) -> dict[str, Any]:
        """What a snapshot or the journal keeps of the job (not its worker)."""
        return {name: getattr(self, name) for name in _KEPT_FIELDS} | {
            "transitions": [dict(t) for t in self.transitions]
        }

    def matches(self, filters: Mapping[str, Any]) -> bool:
        """Whether a ``List*`` request's filters (``NameContains``...) select the job."""
        contains = filters.get("NameContains")
        if contains and contains.lower() not in self.name.lower():
            return False
        if filters.get("StatusEquals") and self.status != filters["StatusEquals"]:
            return False
        bounds = (
            ("CreationTimeAfter", self.created, 1),
            ("CreationTimeBefore", self.created, -1),
            ("LastModifiedTimeAfter", self.modified, 1),
            ("LastModifiedTimeBefore", self.modified, -1),
        )
        for name, when, sign in bounds:
            limit = filters.get(name)
            if limit is not None and (when - float(limit)) * sign <= 0:
                return False
        return True

    def summary(self) -> dict[str, Any]:
        """The job in a ``List*`` answer (``ProcessingJobSummaries``...)."""
        prefix = JOB_PREFIX[self.kind]
        summary: dict[str, Any] = {
            f"{prefix}JobName": self.name,
            f"{prefix}JobArn": self.arn,
            "CreationTime": self.created,
            "LastModifiedTime": self.modified,
            f"{prefix}JobStatus": self.status,
        }
        if self.ended is not None:
            summary[f"{prefix}EndTime"] = self.ended
        if self.kind == TRAINING:
            summary["SecondaryStatus"] = self.secondary
        else:
            if self.failure_reason:
                summary["FailureReason"] = self.failure_reason
            if self.exit_message:
                summary["ExitMessage"] = self.exit_message
        return summary

    def describe(self) -> dict[str, Any]:
        """The ``Describe*`` answer (times as epoch seconds, as botocore reads them)."""
        request = self.request
        answer: dict[str, Any]
        if self.kind == PROCESSING:
            answer = {
                k: request[k]
                for k in (
                    "ProcessingInputs",
                    "ProcessingOutputConfig",
                    "ProcessingJobName",
                    "ProcessingResources",
                    "StoppingCondition",
                    "AppSpecification",
                    "Environment",
                    "NetworkConfig",
                    "RoleArn",
                    "ExperimentConfig",
                )
                if k in request
            }
            answer["ProcessingJobArn"] = self.arn
            answer["ProcessingJobStatus"] = self.status
            if self.exit_message is not None:
                answer["ExitMessage"] = self.exit_message
            if self.failure_reason is not None:
                answer["FailureReason"] = self.failure_reason
            if self.ended is not None:
                answer["ProcessingEndTime"] = self.ended
            if self.started is not None:
                answer["ProcessingStartTime"] = self.started
            answer["LastModifiedTime"] = self.modified
            answer["CreationTime"] = self.created
            return answer
        answer = {"TrainingJobName": self.name, "TrainingJobArn": self.arn}
        answer["ModelArtifacts"] = (
            {"S3ModelArtifacts": self.model_artifacts} if self.model_artifacts else {}
        )
        answer["TrainingJobStatus"] = self.status
        answer["SecondaryStatus"] = self.secondary
        if self.failure_reason is not None:
            answer["FailureReason"] = self.failure_reason
        for key in (
            "HyperParameters",
            "AlgorithmSpecification",
            "RoleArn",
            "InputDataConfig",
            "OutputDataConfig",
            "ResourceConfig",
            "VpcConfig",
            "StoppingCondition",
        ):
            if key in request:
                answer[key] = request[key]
        answer["CreationTime"] = self.created
        if self.started is not None:
            answer["TrainingStartTime"] = self.started
        if self.ended is not None:
            answer["TrainingEndTime"] = self.ended
            if self.started is not None:
                seconds = max(1, round(self.ended - self.started))
                answer["TrainingTimeInSeconds"] = seconds
                answer["BillableTimeInSeconds"] = seconds
        answer["LastModifiedTime"] = self.modified
        answer["SecondaryStatusTransitions"] = [dict(t) for t in self.transitions]
        if self.final_metrics:
            answer["FinalMetricDataList"] = [dict(m) for m in self.final_metrics]
        answer["EnableNetworkIsolation"] = bool(request.get("EnableNetworkIsolation", False))
        answer["EnableInterContainerTrafficEncryption"] = bool(
            request.get("EnableInterContainerTrafficEncryption", False)
        )
        answer["EnableManagedSpotTraining"] = bool(request.get("EnableManagedSpotTraining", False))
        if "Environment" in request:
            answer["Environment"] = request["Environment"]
        return answer

    def event(self) -> dict[str, Any]:
        """The job's state-change event now (a ``PutEvents`` entry)."""
        described = self.describe()
        if self.kind == PROCESSING:
            # SageMaker sends processing times as numbers of epoch milliseconds.
            detail = _times_in_ms(described, as_string=False)
        else:
            # ...and training times as strings of epoch milliseconds, Tags as a map.
            detail = _times_in_ms(described, as_string=True)
            detail.setdefault("VpcConfig", {})
            detail["Tags"] = {t["Key"]: t["Value"] for t in self.request.get("Tags", [])}
            for key in (
                "EnableNetworkIsolation",
                "EnableInterContainerTrafficEncryption",
                "EnableManagedSpotTraining",
                "TrainingTimeInSeconds",
                "BillableTimeInSeconds",
                "Environment",
            ):
                detail.pop(key, None)
            if not detail.get("ModelArtifacts"):
                detail.pop("ModelArtifacts", None)
        if self.kind == PROCESSING:
            detail.setdefault("ExperimentConfig", {})
        return {
            "Source": "aws.sagemaker",
            "DetailType": DETAIL_TYPES[self.kind],
            "Detail": json.dumps(detail),
            "Resources": [self.arn],
            "Time": time.time(),
        }


_KEPT_FIELDS: Final = (
    "kind",
    "name",
    "arn",
    "request",
    "created",
    "log_path",
    "status",
    "secondary",
    "started",
    "ended",
    "modified",
    "failure_reason",
    "exit_message",
    "model_artifacts",
    "final_metrics",
    "revision",
)

_TIME_KEYS = frozenset(
    {
        "CreationTime",
        "LastModifiedTime",
        "ProcessingStartTime",
        "ProcessingEndTime",
        "TrainingStartTime",
        "TrainingEndTime",
        "StartTime",
        "EndTime",
        "Timestamp",
    }
)


def _times_in_ms(document: Any, *, as_string: bool) -> Any:
    if isinstance(document, dict):
        converted = {}
        for key, value in document.items():
            if key in _TIME_KEYS and isinstance(value, (int, float)):
                ms = round(value * 1000)
                converted[key] = str(ms) if as_string else ms
            else:
                converted[key] = _times_in_ms(value, as_string=as_string)
        return converted
    if isinstance(document, list):
        return [_times_in_ms(item, as_string=as_string) for item in document]
    return document


class JobService:
    """The SageMaker processing and training jobs of the local stack.

    Parameters
    ----------
    events
        Where state-change events go (the stack's :class:`~.s3events.MotoEventBus`);
        None: no events.
    max_workers
        Worker processes, so jobs running at once (each runs one job at a time).
    executors
        ``(image URI substring, executor)`` pairs, first match wins
        (:data:`~.executors.DEFAULT_EXECUTORS`).
    max_active_jobs
        Jobs of one kind that may be in progress at once; past it ``Create*`` answers
        ``ResourceLimitExceeded`` (SageMaker's account quotas). None: no limit.
    account_id, region
        Used in ARNs and events.
    work_dir
        Where jobs' directories and logs go; a temporary directory (removed by
        :meth:`close`) if None.
    keep_job_dirs
        Keep each job's container directory after it ends (for debugging).
    credentials
        Access key pair the workers sign S3 requests with.
    mp_context
        Start method of the worker processes (``spawn`` or ``forkserver``; ``fork``
        is unsafe in a process running server threads).

    Examples
    --------
    >>> jobs = JobService(events=MotoEventBus())          # doctest: +SKIP
    >>> jobs.start("http://127.0.0.1:4566")                 # doctest: +SKIP
    >>> responses.handle(jobs, "CreateProcessingJob", {...})  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        events: EventBus | None = None,
        max_workers: int = 2,
        executors: Sequence[tuple[str, Executor]] = DEFAULT_EXECUTORS,
        max_active_jobs: int | None = None,
        account_id: str = DEFAULT_ACCOUNT_ID,
        region: str = DEFAULT_REGION,
        work_dir: Path | None = None,
        keep_job_dirs: bool = False,
        credentials: tuple[str, str] = DEFAULT_CREDENTIALS,
        mp_context: str = "spawn",
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.events = events
        self.max_workers = max_workers
        self.executors = tuple(executors)
        self.max_active_jobs = max_active_jobs
        self.account_id = account_id
        self.region = region
        self.keep_job_dirs = keep_job_dirs
        self.credentials = credentials
        self.endpoint_url: str | None = None
        self._owns_work_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="citymodels-jobs-"))
        self._jobs: dict[tuple[str, str], _Job] = {}
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._workers = WorkerPool(
            max_workers=max_workers,
            region=region,
            credentials=credentials,
            handoff=self.work_dir / "handoff",
            mp_context=mp_context,
        )
        self.journal: Callable[[str, Any], None] | None = None

    # -- lifecycle

    def start(self, endpoint_url: str | None, *, warm: bool = True) -> None:
        """Start the worker processes; they reach S3 at ``endpoint_url``.

        Parameters
        ----------
        endpoint_url
            The local stack's AWS endpoint.
        warm
            Start every worker now (in the background) rather than on the first jobs.
        """
        with self._lock:
            self.endpoint_url = endpoint_url
            self._workers.start(endpoint_url, warm=warm)
            orphans = [j for j in self._jobs.values() if j.active() and j.future is None]
        for job in orphans:
            self._resume(job)

    def close(self) -> None:
        """Stop the workers (jobs in progress end with them) and remove the work dir."""
        self._workers.close()
        if self._owns_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> JobService:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- the API

    def create(self, kind: str, request: dict[str, Any]) -> str:
        """Record a job of a valid ``Create*`` request, start it; return its ARN.

        Raises
        ------
        ResourceInUse
            A job of that kind and name exists.
        ResourceLimitExceeded
            ``max_active_jobs`` of that kind are in progress.
        ValidationException
            A training job names no ``TrainingImage``.
        """
        name = request[f"{JOB_PREFIX[kind]}JobName"]
        image = self._image(kind, request)
        arn = self.arn(kind, name)
        now = time.time()
        with self._lock:
            if (kind, name) in self._jobs:
                what = "Job name" if kind == PROCESSING else "Training job names"
                raise ResourceInUse(
                    f"{what} must be unique within an AWS account and region, and a job "
                    f"with this name already exists ({arn})"
                )
            active = sum(1 for j in self._jobs.values() if j.kind == kind and j.active())
            if self.max_active_jobs is not None and active >= self.max_active_jobs:
                raise ResourceLimitExceeded(
                    f"The account-level service limit 'ml.m5.large for {kind} job usage' is "
                    f"{self.max_active_jobs} Instances, with current utilization of {active} "
                    "Instances and a request delta of 1 Instances. Please use AWS Service "
                    "Quotas to request an increase for this quota."
                )
            job = _Job(
                kind=kind,
                name=name,
                arn=arn,
                request=request,
                created=now,
                modified=now,
                log_path=self.work_dir / "logs" / kind / f"{name}.log",
            )
            job.transitions.append(
                {"Status": "Starting", "StartTime": now, "StatusMessage": "Starting the job"}
            )
            self._jobs[(kind, name)] = job
            event = job.event()
            kept = job.state()
        self._record(kept)
        self._put(event)
        self._submit(job, image)
        return arn

    def describe(self, kind: str, name: str) -> dict[str, Any]:
        """``DescribeProcessingJob`` / ``DescribeTrainingJob``."""
        with self._lock:
            return self._get(kind, name).describe()

    def stop(self, kind: str, name: str) -> None:
        """``StopProcessingJob`` / ``StopTrainingJob``.

        A job still waiting for a worker stops at once; a running one at the end of
        its current phase (download, run, upload), without uploading its outputs.
        """
        with self._lock:
            job = self._get(kind, name)
            if not job.active():
                raise ValidationException(
                    f"The request was rejected because the {kind} job is in status {job.status}."
                )
            if job.status == STOPPING:
                return
            cancelled = job.future is not None and job.future.cancel()
            job.status, job.secondary, job.modified = STOPPING, "Stopping", time.time()
            job.revision += 1
            if job.job_dir is not None:
                job.job_dir.mkdir(parents=True, exist_ok=True)
                (job.job_dir / "stop").touch()
            event = job.event()
            kept = job.state()
        self._record(kept)
        self._put(event)
        if cancelled:
            self._finish(job, WorkerResult(status=STOPPED, phases=[(STOPPED, time.time())]))

    def summaries(self, kind: str, filters: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The summaries of the jobs of ``kind`` a ``List*`` request's filters select."""
        with self._lock:
            return [
                j.summary() for j in self._jobs.values() if j.kind == kind and j.matches(filters)
            ]

    def owns(self, arn: str) -> bool:
        """Whether ``arn`` is one of this service's jobs."""
        kind, _, name = arn.rpartition(":")[2].partition("/")
        kind = {"processing-job": PROCESSING, "training-job": TRAINING}.get(kind, "")
        with self._lock:
            job = self._jobs.get((kind, name))
            return job is not None and job.arn == arn

    def list_tags(self, arn: str) -> dict[str, Any]:
        """``ListTags`` of a job (its ``Tags`` as created)."""
        kind, _, name = arn.rpartition(":")[2].partition("/")
        kind = {"processing-job": PROCESSING, "training-job": TRAINING}.get(kind, "")
        with self._lock:
            job = self._jobs.get((kind, name))
            if job is None:
                raise ValidationException(f"Could not find resource '{arn}'.")
            return {"Tags": list(job.request.get("Tags", []))}

    def wait(self, kind: str, name: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until a job ends; return its Describe answer.

        Raises
        ------
        TimeoutError
            The job is still running after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                job = self._get(kind, name)
                if job.status in TERMINAL:
                    return job.describe()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{kind} job {name} still {job.status} after {timeout} s")
                self._changed.wait(remaining)

    def log(self, kind: str, name: str) -> str:
        """Return what the job printed (its CloudWatch log stream on AWS)."""
        with self._lock:
            path = self._get(kind, name).log_path
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def arn(self, kind: str, name: str) -> str:
        """The ARN of job ``name``."""
        return f"arn:aws:sagemaker:{self.region}:{self.account_id}:{kind}-job/{name}"

    # -- persistence (a participant of :class:`~..persistence.StateStore`)

    name = "jobs"

    def export_state(self) -> Sequence[dict[str, Any]]:
        """Every job as a snapshot keeps it."""
        with self._lock:
            return [job.state() for job in self._jobs.values()]

    def load_state(self, state: Sequence[dict[str, Any]]) -> None:
        """Replace the jobs with those of a snapshot (before :meth:`start`)."""
        with self._lock:
            self._jobs = {}
            for kept in state:
                self.replay(kept)

    def replay(self, payload: dict[str, Any]) -> None:
        """Apply a journaled job state (a later revision wins)."""
        with self._lock:
            key = (payload["kind"], payload["name"])
            known = self._jobs.get(key)
            if known is not None and known.revision > payload["revision"]:
                return
            self._jobs[key] = _Job(**payload)

    def _record(self, kept: dict[str, Any]) -> None:
        # Called without this service's lock: the store takes its own inside, and a
        # snapshot (holding the store's lock) reads the jobs under this one.
        if self.journal is not None:
            self.journal(self.name, kept)

    def _resume(self, job: _Job) -> None:
        """Run again a job that was in progress when the stack stopped (restored).

        SageMaker never loses a running job; the local stack's workers die with it, so
        the job starts over (its transitions say so), or ends Stopped if a stop was
        asked. Either way its state-change event follows, and the run moves on.
        """
        if job.status == STOPPING:
            self._finish(job, WorkerResult(status=STOPPED, phases=[(STOPPED, time.time())]))
            return
        now = time.time()
        with self._lock:
            job.transitions[-1].setdefault("EndTime", now)
            job.transitions.append(
                {"Status": "Starting", "StartTime": now, "StatusMessage": RESTARTED_MESSAGE}
            )
            job.secondary, job.modified = "Starting", now
            job.log_path = self.work_dir / "logs" / job.kind / f"{job.name}.log"
            job.revision += 1
            kept = job.state()
        self._record(kept)
        try:
            image = self._image(job.kind, job.request)
        except SageMakerError as error:  # it was accepted once; cannot happen
            self._finish(job, crashed(error))
            return
        self._submit(job, image)

    # -- running

    def _image(self, kind: str, request: Mapping[str, Any]) -> str:
        if kind == PROCESSING:
            return str(request["AppSpecification"]["ImageUri"])
        spec = request.get("AlgorithmSpecification") or {}
        image = spec.get("TrainingImage")
        if not image:
            raise ValidationException(
                "AlgorithmSpecification.TrainingImage must be given (the local stack does "
                "not run marketplace algorithms)"
            )
        return str(image)

    def _submit(self, job: _Job, image: str) -> None:
        job.job_dir = self.work_dir / "jobs" / f"{job.kind}-{job.name}"
        environment = {
            "AWS_ENDPOINT_URL": self.endpoint_url or "",
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.credentials[0],
            "AWS_SECRET_ACCESS_KEY": self.credentials[1],
        }
        if not self.endpoint_url:
            del environment["AWS_ENDPOINT_URL"]
        environment.update(job.request.get("Environment") or {})
        work = WorkerJob(
            kind=job.kind,
            name=job.name,
            request=job.request,
            executor=executor_for(image, self.executors),
            image=image,
            job_dir=str(job.job_dir),
            log_path=str(job.log_path),
            environment=environment,
            region=self.region,
            keep_files=self.keep_job_dirs,
        )
        try:
            with self._lock:
                job.future = self._workers.submit(work, partial(self._finish, job))
        except (BrokenProcessPool, RuntimeError) as error:
            self._finish(job, crashed(error))

    def _finish(self, job: _Job, result: WorkerResult) -> None:
        with self._lock:
            if job.status in TERMINAL:
                return
            status = STOPPED if job.status == STOPPING else result.status
            phases = result.phases or [(status, time.time())]
            job.started = phases[0][1] if len(phases) > 1 else None
            job.ended = phases[-1][1]
            for phase, when in phases:
                if phase in TERMINAL:
                    phase = status
                last = job.transitions[-1]
                last.setdefault("EndTime", when)
                job.transitions.append({"Status": phase, "StartTime": when})
            job.status = status
            job.secondary = status
            job.modified = job.ended
            if status == FAILED:
                job.failure_reason = result.failure_reason or "InternalServerError"
                job.exit_message = result.exit_message
            if status == COMPLETED:
                job.model_artifacts = result.model_artifacts
                job.final_metrics = result.final_metrics
            job.revision += 1
            event = job.event()
            job.future = None
            self._changed.notify_all()
            kept = job.state()
        self._record(kept)
        self._put(event)
        if job.job_dir is not None and not self.keep_job_dirs:
            # Its worker removed the job's files; what is left is at most a stop marker.
            shutil.rmtree(job.job_dir, ignore_errors=True)

    def _get(self, kind: str, name: str) -> _Job:
        job = self._jobs.get((kind, name))
        if job is None:
            raise ValidationException(f"Could not find {kind} job '{self.arn(kind, name)}'.")
        return job

    def _put(self, event: dict[str, Any]) -> None:
        if self.events is None:
            return
        try:
            self.events.put_events([event])
        except Exception:  # an event bus failure must not lose the job's state
            logger.exception("could not put a job state-change event")
