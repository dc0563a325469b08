"""Worker processes that run the local stack's SageMaker jobs, one job at a time each.

:class:`WorkerPool` keeps ``max_workers`` long-lived processes (``spawn`` start
method) that imported numpy, the local Linear Learner and boto3 once, when they
started: no job pays an import or an interpreter start. The backend (:mod:`.models`)
submits a :class:`WorkerJob`; the worker runs it (:func:`_run_job`) with the job's
``Environment`` set in that process for the job only, and its output is the job's
log:

1. ``Downloading``: the container root ``/opt/ml`` is a directory of the job's, and
   the inputs come from S3 into it (:mod:`.staging`);
2. ``Training``: the executor of the job's image runs (:mod:`.executors`);
3. ``Uploading``: the outputs go to S3 (:mod:`.staging`);

and the worker reports a :class:`WorkerResult`: ``Completed``, ``Failed`` (with
``FailureReason`` and, for processing, ``ExitMessage``) or ``Stopped``.

``Stop*`` takes effect between these phases (a ``stop`` file in the job's
directory): a running script is not interrupted, and its outputs are not uploaded.
``MaxRuntimeInSeconds`` is not enforced. A worker that dies (killed, out of memory)
fails its job with ``InternalServerError`` and the pool is replaced for the jobs to
come.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

from citymodels_devkit.local.sagemaker import staging
from citymodels_devkit.local.sagemaker.executors import ContainerRun, Executor, host_argument
from citymodels_devkit.local.sagemaker.staging import (
    InputError,
    download_processing_inputs,
    download_training_inputs,
    upload_model,
    upload_processing_outputs,
)

__all__ = [
    "COMPLETED",
    "FAILED",
    "JOBS_AGENT",
    "PROCESSING",
    "STOPPED",
    "TRAINING",
    "WorkerJob",
    "WorkerPool",
    "WorkerResult",
    "crashed",
]

PROCESSING: Final = "processing"
TRAINING: Final = "training"
"""The two kinds of job (a job's name is unique within its kind)."""

COMPLETED: Final = "Completed"
FAILED: Final = "Failed"
STOPPED: Final = "Stopped"
"""The statuses a job's run ends in."""

JOBS_AGENT: Final = "cm-local-jobs"
"""In the User-Agent of the job workers' S3 calls (SageMaker's own, on AWS)."""
MAX_EXIT_MESSAGE: Final = 1024
MAX_FAILURE_REASON: Final = 1024


class WorkerPool:
    """The worker processes, replaced whole when one dies.

    Parameters
    ----------
    max_workers
        Worker processes, so jobs running at once.
    region, credentials
        What the workers' S3 client signs with.
    handoff
        The workers' shared folder: a job's small outputs, for the job reading them next.
    mp_context
        Start method (``spawn`` or ``forkserver``; ``fork`` is unsafe in a process
        running server threads).
    """

    def __init__(
        self,
        *,
        max_workers: int,
        region: str,
        credentials: tuple[str, str],
        handoff: Path,
        mp_context: str = "spawn",
    ) -> None:
        self.max_workers = max_workers
        self.region = region
        self.credentials = credentials
        self.handoff = handoff
        self.endpoint_url: str | None = None
        self._mp_context = mp_context
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None

    def start(self, endpoint_url: str | None, *, warm: bool = True) -> None:
        """(Re)start the workers; they reach S3 at ``endpoint_url``.

        ``warm``: start every worker now (in the background) rather than on the first jobs.
        """
        with self._lock:
            self.endpoint_url = endpoint_url
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = executor = self._new_executor()
        if warm:
            self._warm(executor)

    def submit(self, job: WorkerJob, done: Callable[[WorkerResult], None]) -> Future[WorkerResult]:
        """Run ``job`` in a worker; ``done(result)`` follows, unless the job is cancelled.

        ``done`` runs in a thread of its own (see :meth:`_hand_off`).

        Raises
        ------
        BrokenProcessPool, RuntimeError
            The pool could not take the job (it is replaced for the next one).
        """
        try:
            with self._lock:
                if self._executor is None:
                    self._executor = self._new_executor()
                executor = self._executor
                future = executor.submit(_run_job, job)
        except (BrokenProcessPool, RuntimeError):
            with self._lock:
                self._executor = self._new_executor()
            raise
        future.add_done_callback(partial(self._hand_off, executor, job.name, done))
        return future

    def close(self) -> None:
        """Stop the workers (jobs in progress end with them)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def _hand_off(
        self,
        executor: ProcessPoolExecutor,
        name: str,
        done: Callable[[WorkerResult], None],
        future: Future[WorkerResult],
    ) -> None:
        # Done-callbacks run in the executor's manager thread; on Python 3.12+ that
        # thread holds the executor's shutdown lock while it fails the futures of a
        # broken pool. Finishing a job takes the job service's lock (which it holds
        # while it submits to that same executor) and posts the job's event: both
        # would stall or deadlock the manager thread, so the job is finished in a
        # thread of its own.
        threading.Thread(
            target=self._settle,
            args=(executor, done, future),
            name=f"finish-{name}",
            daemon=True,
        ).start()

    def _settle(
        self,
        executor: ProcessPoolExecutor,
        done: Callable[[WorkerResult], None],
        future: Future[WorkerResult],
    ) -> None:
        if future.cancelled():
            return  # the job service stopped it and finished it
        try:
            result = future.result()
        except BrokenProcessPool as error:
            # A worker died (killed, out of memory): the executor has already failed
            # every job of that pool and shut itself down; the first job to notice
            # replaces the pool for the jobs to come.
            fresh = None
            with self._lock:
                if self._executor is not None and self._executor is executor:
                    fresh = self._executor = self._new_executor()
            if fresh is not None:
                self._warm(fresh)
            result = crashed(error)
        except Exception as error:
            result = crashed(error)
        done(result)

    def _warm(self, executor: ProcessPoolExecutor) -> None:
        # Each submit finds no idle worker and starts one: all start importing now.
        for _ in range(self.max_workers):
            executor.submit(_ping)

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.max_workers,
            mp_context=multiprocessing.get_context(self._mp_context),
            initializer=_init_worker,
            initargs=(self.endpoint_url, self.region, self.credentials, str(self.handoff)),
        )


# -- inside a worker process -------------------------------------------------------------

_worker_s3: Any = None


def _init_worker(
    endpoint_url: str | None,
    region: str,
    credentials: tuple[str, str],
    handoff: str | None = None,
) -> None:
    """Import what jobs use once per worker, build its S3 client, follow the parent."""
    global _worker_s3
    _exit_with_parent()
    if handoff is not None:
        staging.worker_cache.handoff = Path(handoff)
    import numpy  # noqa: F401 - imported for the jobs that follow

    import citymodels_devkit.linear_learner.container  # noqa: F401

    if endpoint_url:
        import boto3
        from botocore.config import Config

        _worker_s3 = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=credentials[0],
            aws_secret_access_key=credentials[1],
            # the User-Agent tells the jobs' S3 calls from the functions' (bench --trace)
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"}, user_agent_extra=JOBS_AGENT
            ),
        )


def _exit_with_parent() -> None:
    """End this worker when the process that started it dies.

    A worker idles reading its task pipe, whose other end every worker also holds: if
    the stack is killed (not closed), the workers would never see end-of-file and live
    on, orphaned. A daemon thread waits on the parent's sentinel instead.
    """
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return

    def watch(sentinel: int) -> None:
        multiprocessing.connection.wait([sentinel])
        os._exit(1)

    threading.Thread(
        target=watch, args=(parent.sentinel,), name="parent-watch", daemon=True
    ).start()


def _ping() -> int:
    return os.getpid()


@dataclass(frozen=True)
class WorkerJob:
    """One job as its worker runs it (sent to the worker process: picklable)."""

    kind: str
    name: str
    request: dict[str, Any]
    executor: Executor | None
    image: str
    job_dir: str
    log_path: str
    environment: dict[str, str]
    region: str
    keep_files: bool = False


@dataclass
class WorkerResult:
    """How a job's run ended, reported back by its worker.

    Attributes
    ----------
    status
        :data:`COMPLETED`, :data:`FAILED` or :data:`STOPPED`.
    phases
        ``(secondary status, when)`` as the run went (``Downloading``, ``Training``,
        ``Uploading``, then the status it ended in).
    failure_reason, exit_message, model_artifacts, final_metrics
        What ``Describe*`` reports of the run.
    """

    status: str
    phases: list[tuple[str, float]] = field(default_factory=list)
    failure_reason: str | None = None
    exit_message: str | None = None
    model_artifacts: str | None = None
    final_metrics: list[dict[str, Any]] = field(default_factory=list)


def _run_job(job: WorkerJob) -> WorkerResult:
    """Run one job in a worker: download, execute, upload. Never raises."""
    job_dir = Path(job.job_dir)
    ml_root = job_dir / "ml"
    ml_root.mkdir(parents=True, exist_ok=True)
    result = WorkerResult(status=FAILED)
    Path(job.log_path).parent.mkdir(parents=True, exist_ok=True)
    with (
        open(job.log_path, "a", encoding="utf-8") as log,  # noqa: PTH123 - a text stream
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        try:
            _run_phases(job, ml_root, job_dir / "stop", result)
        except InputError as error:
            print(f"ClientError: {error}", file=sys.stderr)
            result.status, result.failure_reason = FAILED, _clip(f"ClientError: {error}")
        except Exception as error:
            traceback.print_exc()
            result.status = FAILED
            result.failure_reason = _clip(
                f"InternalServerError: the local stack could not run the job: "
                f"{type(error).__name__}: {error}"
            )
        result.phases.append((result.status, time.time()))
    if not job.keep_files:  # here, not in the service: its process serves every AWS call
        shutil.rmtree(ml_root, ignore_errors=True)
    return result


def _run_phases(job: WorkerJob, ml_root: Path, stop: Path, result: WorkerResult) -> None:
    s3 = _worker_s3
    if s3 is None:
        raise InputError("the local stack's job service has no AWS endpoint to read S3 from")
    if job.executor is None:
        raise InputError(
            f"the local stack has no executor for image {job.image!r}: it runs images "
            "whose URI contains 'sklearn' (scikit-learn processing) or 'linear-learner'"
        )
    result.phases.append(("Downloading", time.time()))
    if job.kind == PROCESSING:
        download_processing_inputs(s3, job.request, ml_root)
        app = job.request.get("AppSpecification", {})
        run = ContainerRun(
            PROCESSING,
            job.name,
            str(ml_root),
            tuple(host_argument(a, ml_root) for a in app.get("ContainerEntrypoint", [])),
            tuple(host_argument(a, ml_root) for a in app.get("ContainerArguments", [])),
        )
    else:
        download_training_inputs(s3, job.request, ml_root, job.region)
        run = ContainerRun(TRAINING, job.name, str(ml_root))
    if stop.exists():
        result.status = STOPPED
        return
    result.phases.append(("Training", time.time()))
    print(f"[local stack] running {job.kind} job {job.name} ({job.image})", flush=True)
    with _environment(job.environment):
        status = job.executor(run)
    print(f"[local stack] exit status {status}", flush=True)
    if stop.exists():
        result.status = STOPPED
        return
    if status != 0:
        result.status = FAILED
        if job.kind == PROCESSING:
            result.failure_reason = "AlgorithmError: See job logs for more information"
            message = ml_root / "output" / "message"
            if message.is_file():
                text = message.read_text(encoding="utf-8", errors="replace")
                result.exit_message = text[:MAX_EXIT_MESSAGE]
        else:
            result.failure_reason = _training_failure(ml_root, status)
        return
    result.phases.append(("Uploading", time.time()))
    if job.kind == PROCESSING:
        upload_processing_outputs(s3, job.request, ml_root)
    else:
        result.model_artifacts = upload_model(s3, job.request, job.name, ml_root)
        result.final_metrics = _final_metrics(ml_root)
    result.status = COMPLETED


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _final_metrics(ml_root: Path) -> list[dict[str, Any]]:
    path = ml_root / "output" / "metrics.json"
    if not path.is_file():
        return []
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    now = time.time()
    return [
        {"MetricName": str(m["MetricName"]), "Value": float(m["Value"]), "Timestamp": now}
        for m in metrics
        if isinstance(m, dict) and "MetricName" in m and "Value" in m
    ]


def _training_failure(ml_root: Path, status: int) -> str:
    """``FailureReason`` of a failed training job: the first line of ``output/failure``.

    Built-in algorithms (and the local Linear Learner) write ``ClientError: ...`` or
    ``AlgorithmError: ...`` there, which SageMaker reports as it is; any other text
    is an ``AlgorithmError``.
    """
    path = ml_root / "output" / "failure"
    first = ""
    if path.is_file():
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        first = lines[0].strip() if lines else ""
    if not first:
        return f"AlgorithmError: See job logs for more information, exit code: {status}"
    if not first.startswith(("ClientError:", "AlgorithmError:")):
        first = f"AlgorithmError: {first}"
    return _clip(first)


def _clip(text: str, limit: int = MAX_FAILURE_REASON) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def crashed(error: BaseException) -> WorkerResult:
    """The result of a job its worker could not run (it died, or never took the job)."""
    return WorkerResult(
        status=FAILED,
        phases=[(FAILED, time.time())],
        failure_reason=_clip(
            f"InternalServerError: the local job worker failed: {type(error).__name__}: {error}"
        ),
    )
