"""SageMaker processing and training jobs that really run, for the local stack.

moto records ``CreateProcessingJob`` and ``CreateTrainingJob`` and nothing happens;
on AWS the job runs a container and emits state-change events that drive the
application. :class:`JobService` serves the job operations of the SageMaker API
(the front application, ``local/aws.py``, hands them over) and runs each job:

1. ``Create*`` validates the request against botocore's SageMaker model (required
   members, types, lengths, patterns, enums; job names
   ``^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$``), answers ``ResourceInUse`` for a name
   already taken and, with ``max_active_jobs``, ``ResourceLimitExceeded`` past that
   many running jobs of a kind, records the job ``InProgress`` and emits its first
   state-change event.
2. The job runs off the request path, in a pool of long-lived worker processes
   (``spawn`` start method, ``max_workers``, default 2) that imported numpy, the
   local Linear Learner and boto3 once, when they started: no job pays an import or
   an interpreter start. A worker runs one job at a time, with the job's
   ``Environment`` set in that process for the job only.
3. The worker maps the container root ``/opt/ml`` to a directory of its own,
   downloads the inputs from S3, runs the executor of the job's image, uploads the
   outputs to S3 and reports back; what the job prints is its log
   (:meth:`JobService.log`, CloudWatch Logs on AWS). S3 is reached through the local stack's own AWS
   endpoint with boto3 (not moto's backend: the workers are other processes), so job
   outputs are ordinary S3 writes, with their ``Object Created`` events, as on AWS.
4. The job ends ``Completed``, ``Failed`` (with ``FailureReason`` and, for
   processing, ``ExitMessage``) or ``Stopped``, and its state-change event goes to
   the default event bus, shaped as SageMaker's (``detail`` = the Describe fields,
   times in epoch milliseconds).

Images map to executors by substring (:data:`DEFAULT_EXECUTORS`, configurable):

- ``sklearn`` / ``scikit-learn``: :class:`PythonEntrypoint` runs the job's
  ``ContainerEntrypoint`` (``python3 /opt/ml/processing/input/code/preprocess.py``)
  from the *downloaded* code input, in the worker, with ``runpy``; the exit status
  comes from ``SystemExit``. Container paths in the arguments are mapped, and the
  script's own container-path defaults are passed to it as ``--input-dir``,
  ``--output-dir`` and ``--message-file`` (``preprocess.py``'s interface). The
  ``citymodels`` package the script imports is the one shipped beside it in the
  code bundle, as in the container: the devkit's installed copy is hidden.
- ``linear-learner``: :func:`run_linear_learner`, the local Linear Learner's
  training-container contract.

Another image fails the job with a ``FailureReason`` that says so.

Limits (each says so where it applies): S3 inputs only (``S3Prefix``, not
``ManifestFile``, no Gzip channels, no dataset definitions); ``StopProcessingJob`` /
``StopTrainingJob`` take effect between the job's phases (a running script is not
interrupted; its outputs are not uploaded); ``MaxRuntimeInSeconds`` is not enforced.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.abc
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import re
import runpy
import shutil
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import cache, partial
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from citymodels_devkit.local.s3events import EventBus

__all__ = [
    "DEFAULT_EXECUTORS",
    "OPERATIONS",
    "ContainerRun",
    "JobService",
    "PythonEntrypoint",
    "ResourceInUse",
    "ResourceLimitExceeded",
    "SageMakerError",
    "ValidationException",
    "run_linear_learner",
]

logger = logging.getLogger(__name__)

PROCESSING: Final = "processing"
TRAINING: Final = "training"

IN_PROGRESS: Final = "InProgress"
COMPLETED: Final = "Completed"
FAILED: Final = "Failed"
STOPPING: Final = "Stopping"
STOPPED: Final = "Stopped"
TERMINAL: Final = frozenset({COMPLETED, FAILED, STOPPED})

HANDOFF_SECONDS: Final = 900
"""How long a job's small output waits in the workers' shared folder for the job that
reads it next (a training job waits for a worker, rarely for long)."""
JOBS_AGENT: Final = "cm-local-jobs"
"""In the User-Agent of the job workers' S3 calls (SageMaker's own, on AWS)."""
CONTAINER_ROOT: Final = "/opt/ml"
PROCESSING_ROOT: Final = "/opt/ml/processing"
JOB_NAME_PATTERN: Final = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
MAX_EXIT_MESSAGE: Final = 1024
MAX_FAILURE_REASON: Final = 1024
DEFAULT_ACCOUNT_ID: Final = "123456789012"
DEFAULT_REGION: Final = "us-east-1"
DEFAULT_CREDENTIALS: Final = ("citymodels-local", "citymodels-local")

OPERATIONS: Final = frozenset(
    {
        "CreateProcessingJob",
        "DescribeProcessingJob",
        "StopProcessingJob",
        "ListProcessingJobs",
        "CreateTrainingJob",
        "DescribeTrainingJob",
        "StopTrainingJob",
        "ListTrainingJobs",
    }
)
"""The SageMaker operations :meth:`JobService.handle` serves; moto serves the rest."""

DETAIL_TYPES: Final = {
    PROCESSING: "SageMaker Processing Job State Change",
    TRAINING: "SageMaker Training Job State Change",
}


# -- errors: the SageMaker API's, as botocore's JSON protocol reads them -----------------


class SageMakerError(Exception):
    """An error answer of the SageMaker API (HTTP 400, ``{"__type", "Message"}``)."""

    code = "InternalFailure"
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, str]:
        """Return the error body botocore's JSON protocol parses."""
        return {"__type": self.code, "Message": self.message}


class ValidationException(SageMakerError):
    """The request is invalid, or names a job that does not exist."""

    code = "ValidationException"


class ResourceInUse(SageMakerError):
    """A job of that name exists already."""

    code = "ResourceInUse"


class ResourceLimitExceeded(SageMakerError):
    """More jobs of that kind are running than the configured capacity."""

    code = "ResourceLimitExceeded"


class SerializationException(SageMakerError):
    """The request body is not a JSON object."""

    code = "SerializationException"


# -- executors: what an image runs, inside a worker process ---------------------------


@dataclass(frozen=True)
class ContainerRun:
    """One container run, as an executor sees it.

    Attributes
    ----------
    kind
        ``processing`` or ``training``.
    job_name
        The job's name.
    ml_root
        The local directory standing for the container's ``/opt/ml``.
    entrypoint, arguments
        ``AppSpecification.ContainerEntrypoint`` / ``ContainerArguments`` (processing),
        container paths already mapped under ``ml_root``.
    """

    kind: str
    job_name: str
    ml_root: str
    entrypoint: tuple[str, ...] = ()
    arguments: tuple[str, ...] = ()

    def host_path(self, container_path: str) -> str:
        """Map a container path (``/opt/ml/...``) to its local directory."""
        return host_path(container_path, Path(self.ml_root))


Executor = Callable[[ContainerRun], int]
"""Runs a container in the worker process and returns its exit status. Must be
picklable (a module-level function or an instance of a module-level class)."""


def host_path(container_path: str, ml_root: Path) -> str:
    """Map ``/opt/ml`` and everything under it to ``ml_root``; leave other paths alone."""
    if container_path == CONTAINER_ROOT:
        return str(ml_root)
    if container_path.startswith(CONTAINER_ROOT + "/"):
        return str(ml_root / container_path[len(CONTAINER_ROOT) + 1 :])
    return container_path


def _host_argument(argument: str, ml_root: Path) -> str:
    """Map a container path in an argument, bare or as ``--flag=/opt/ml/...``."""
    if argument.startswith("-") and "=" in argument:
        flag, value = argument.split("=", 1)
        return f"{flag}={host_path(value, ml_root)}"
    return host_path(argument, ml_root)


PROCESSING_SCRIPT_INTERFACE: Final = (
    ("--input-dir", "/opt/ml/processing/input/raw"),
    ("--output-dir", "/opt/ml/processing/output"),
    ("--message-file", "/opt/ml/output/message"),
)
"""The container paths of ``preprocessing/preprocess.py`` (its defaults), passed to it
as arguments because a local process cannot see ``/opt/ml``."""

_PYTHON = re.compile(r"python(3(\.\d+)?)?")
_PYTHON_FLAGS = frozenset({"-u", "-B", "-O", "-OO", "-s", "-E", "-I", "-b", "-bb", "-q"})


@dataclass(frozen=True)
class PythonEntrypoint:
    """Executor of the scikit-learn image: runs a Python entrypoint in the worker.

    ``python3 [flags] SCRIPT ARGS...`` runs ``SCRIPT`` with :func:`runpy.run_path`,
    ``python3 -m MODULE ARGS...`` with :func:`runpy.run_module`, as ``__main__``,
    with ``sys.argv`` set, the script's directory first on ``sys.path`` and the
    working directory at the container root. Modules the script's directory provides
    (the shipped ``citymodels`` package) are imported from there for the run and
    forgotten afterwards, so the code under test is the code bundle's.

    Parameters
    ----------
    interface_arguments
        ``(flag, container path)`` pairs added to the arguments, mapped, when the job
        does not pass the flag itself: how a script whose defaults are container
        paths finds its directories locally (:data:`PROCESSING_SCRIPT_INTERFACE`).
    container_only_packages
        Packages installed here but not in the container: during the run they import
        only from the script's directory (the code bundle), so a bundle that lacks
        them fails as it would in SageMaker rather than borrowing the devkit's copy.
    """

    interface_arguments: tuple[tuple[str, str], ...] = PROCESSING_SCRIPT_INTERFACE
    container_only_packages: tuple[str, ...] = ("citymodels", "citymodels_devkit")

    def __call__(self, run: ContainerRun) -> int:
        """Run the entrypoint; return its exit status."""
        command = [*run.entrypoint, *run.arguments]
        if not command:
            print("the job has no ContainerEntrypoint to run", file=sys.stderr)
            return 127
        if _PYTHON.fullmatch(Path(command[0]).name) is None:
            print(
                f"the local stack runs Python entrypoints only (python3 SCRIPT ...), "
                f"not {command[0]!r}",
                file=sys.stderr,
            )
            return 127
        rest = command[1:]
        while rest and rest[0] in _PYTHON_FLAGS:
            rest.pop(0)
        given = {argument.split("=", 1)[0] for argument in rest}
        extra = [
            item
            for flag, path in self.interface_arguments
            if flag not in given
            for item in (flag, run.host_path(path))
        ]
        if len(rest) >= 2 and rest[0] == "-m":
            return _run_python(
                None,
                rest[1],
                [rest[1], *rest[2:], *extra],
                Path(run.ml_root),
                self.container_only_packages,
            )
        if not rest or rest[0].startswith("-"):
            print(f"cannot run {' '.join(command)!r}: expected python3 SCRIPT", file=sys.stderr)
            return 2
        script = Path(rest[0])
        if not script.is_file():
            print(f"python3: can't open file {rest[0]!r}: no such file", file=sys.stderr)
            return 2
        return _run_python(
            script,
            None,
            [str(script), *rest[1:], *extra],
            Path(run.ml_root),
            self.container_only_packages,
        )


def _run_python(
    script: Path | None,
    module: str | None,
    argv: list[str],
    ml_root: Path,
    container_only: Sequence[str],
) -> int:
    saved_argv, saved_path, saved_cwd = sys.argv[:], sys.path[:], Path.cwd()
    search_dir = script.parent if script is not None else ml_root
    provided = _provided_by(search_dir)
    hidden = _take_modules({*provided, *container_only})
    blocker = _ImportBlocker(frozenset(container_only) - provided)
    try:
        sys.argv = argv
        sys.path.insert(0, str(search_dir))
        sys.meta_path.insert(0, blocker)
        os.chdir(ml_root)
        if script is not None:
            runpy.run_path(str(script), run_name="__main__")
        else:
            assert module is not None
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    except SystemExit as exit_:
        if exit_.code is None:
            return 0
        if isinstance(exit_.code, int):
            return exit_.code
        print(exit_.code, file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(blocker)
        sys.argv, sys.path[:] = saved_argv, saved_path
        os.chdir(saved_cwd)
        _take_modules({*provided, *container_only})
        for name in [n for n, m in list(sys.modules.items()) if _loaded_from(m, ml_root)]:
            del sys.modules[name]
        sys.modules.update(hidden)


class _ImportBlocker(importlib.abc.MetaPathFinder):
    """Makes packages the container does not have unimportable for a run."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname.split(".", 1)[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def _provided_by(directory: Path) -> set[str]:
    """Top-level modules and packages importable from ``directory``."""
    names: set[str] = set()
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            if entry.suffix == ".py":
                names.add(entry.stem)
            elif entry.is_dir() and (entry / "__init__.py").exists():
                names.add(entry.name)
    return names


def _take_modules(names: set[str]) -> dict[str, Any]:
    """Take ``names`` and their submodules out of ``sys.modules``; return them."""
    taken = {name: module for name, module in sys.modules.items() if name.split(".", 1)[0] in names}
    for name in taken:
        del sys.modules[name]
    return taken


def _loaded_from(module: Any, root: Path) -> bool:
    location = getattr(module, "__file__", None)
    if location is None:
        paths = list(getattr(module, "__path__", []) or [])
        location = paths[0] if paths else None
    return location is not None and str(location).startswith(str(root))


def run_linear_learner(run: ContainerRun) -> int:
    """Executor of the linear-learner image: the local Linear Learner.

    Follows the training-container contract
    (:func:`citymodels_devkit.linear_learner.container.run_training`).
    """
    from citymodels_devkit.linear_learner.container import run_training

    return run_training(Path(run.ml_root))


DEFAULT_EXECUTORS: Final[tuple[tuple[str, Executor], ...]] = (
    ("sklearn", PythonEntrypoint()),
    ("scikit-learn", PythonEntrypoint()),
    ("linear-learner", run_linear_learner),
)
"""Image URI substring (case-insensitive) → executor; the first match wins."""


# -- the worker process ------------------------------------------------------------------

_worker_s3: Any = None
_worker_endpoint: str | None = None


def _init_worker(
    endpoint_url: str | None,
    region: str,
    credentials: tuple[str, str],
    handoff: str | None = None,
) -> None:
    """Import what jobs use once per worker, build its S3 client, follow the parent."""
    global _worker_s3, _worker_endpoint
    _exit_with_parent()
    if handoff is not None:
        _worker_objects.handoff = Path(handoff)
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
        _worker_endpoint = endpoint_url


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


class _InputError(Exception):
    """The job's input cannot be read: the job fails with ``ClientError: <message>``."""


@dataclass(frozen=True)
class _WorkerJob:
    kind: str
    name: str
    request: dict[str, Any]
    executor: Executor | None
    image: str
    job_dir: str
    log_path: str
    environment: dict[str, str]
    region: str


@dataclass
class _WorkerResult:
    status: str
    phases: list[tuple[str, float]] = field(default_factory=list)
    failure_reason: str | None = None
    exit_message: str | None = None
    model_artifacts: str | None = None
    final_metrics: list[dict[str, Any]] = field(default_factory=list)


def _run_job(job: _WorkerJob) -> _WorkerResult:
    """Run one job in a worker: download, execute, upload. Never raises."""
    job_dir = Path(job.job_dir)
    ml_root = job_dir / "ml"
    ml_root.mkdir(parents=True, exist_ok=True)
    result = _WorkerResult(status=FAILED)
    Path(job.log_path).parent.mkdir(parents=True, exist_ok=True)
    with (
        open(job.log_path, "a", encoding="utf-8") as log,  # noqa: PTH123 - a text stream
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        try:
            _run_phases(job, ml_root, job_dir / "stop", result)
        except _InputError as error:
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
    return result


def _run_phases(job: _WorkerJob, ml_root: Path, stop: Path, result: _WorkerResult) -> None:
    s3 = _worker_s3
    if s3 is None:
        raise _InputError("the local stack's job service has no AWS endpoint to read S3 from")
    if job.executor is None:
        raise _InputError(
            f"the local stack has no executor for image {job.image!r}: it runs images "
            "whose URI contains 'sklearn' (scikit-learn processing) or 'linear-learner'"
        )
    result.phases.append(("Downloading", time.time()))
    if job.kind == PROCESSING:
        _download_processing_inputs(s3, job.request, ml_root)
        app = job.request.get("AppSpecification", {})
        run = ContainerRun(
            PROCESSING,
            job.name,
            str(ml_root),
            tuple(_host_argument(a, ml_root) for a in app.get("ContainerEntrypoint", [])),
            tuple(_host_argument(a, ml_root) for a in app.get("ContainerArguments", [])),
        )
    else:
        _download_training_inputs(s3, job.request, ml_root, job.region)
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
        _upload_processing_outputs(s3, job.request, ml_root)
    else:
        result.model_artifacts = _upload_model(s3, job.request, job.name, ml_root)
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


def _split_s3_uri(uri: str) -> tuple[str, str]:
    match = re.fullmatch(r"s3://([^/]+)/?(.*)", uri)
    if match is None:
        raise _InputError(f"{uri!r} is not an s3:// URI")
    return match.group(1), match.group(2)


class ObjectCache:
    """Small S3 objects a job worker has read, by bucket, key and ETag (least recent out).

    Every processing job downloads the same processing code (about 20 objects under
    ``artifacts/processing/``); the listing that a download starts with already gives
    each object's ETag, so an object whose key and ETag were read before is not read
    again: the same bytes, one ``GetObject`` fewer, in a worker that keeps them. Only
    objects up to ``max_object`` bytes are kept, ``max_total`` in all.

    With a ``handoff`` directory (shared by the workers), the small objects a job
    uploads (a processing job's splits) are left there for the one job that reads them
    next (the run's training job, in any worker): it takes them, by key and ETag, and
    does not read them from S3 again.
    """

    def __init__(
        self,
        max_total: int = 32 << 20,
        max_object: int = 1 << 20,
        handoff: Path | None = None,
    ) -> None:
        self.max_total, self.max_object = max_total, max_object
        self.handoff = handoff
        self._pruned = time.time()
        self._objects: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
        self._size = 0

    def get(self, bucket: str, key: str, etag: str) -> bytes | None:
        data = self._objects.get((bucket, key, etag))
        if data is not None:
            self._objects.move_to_end((bucket, key, etag))
            return data
        path = self._handoff_path(bucket, key, etag)
        if path is None:
            return None
        try:
            data = path.read_bytes()
            path.unlink()  # taken: read once (a job run again reads S3)
        except OSError:
            return None
        return data

    def leave(self, bucket: str, key: str, etag: str, data: bytes) -> None:
        """Leave an uploaded object for the job that reads it next."""
        path = self._handoff_path(bucket, key, etag)
        if path is None or len(data) > self.max_object:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.part")
        partial.write_bytes(data)
        partial.replace(path)  # whole or absent, whoever looks
        self._prune(path.parent)

    def _prune(self, folder: Path) -> None:
        """Forget what no job took within :data:`HANDOFF_SECONDS` (e.g. outputs no job
        reads), looking at most once a minute: the folder stays small."""
        now = time.time()
        if now - self._pruned < 60:
            return
        self._pruned = now
        for entry in folder.iterdir():
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > HANDOFF_SECONDS:
                    entry.unlink()

    def _handoff_path(self, bucket: str, key: str, etag: str) -> Path | None:
        if self.handoff is None or not etag:
            return None
        name = hashlib.sha256(f"{bucket}\0{key}\0{etag.strip(chr(34))}".encode()).hexdigest()
        return self.handoff / name

    def put(self, bucket: str, key: str, etag: str, data: bytes) -> None:
        if len(data) > self.max_object or (bucket, key, etag) in self._objects:
            return
        self._objects[(bucket, key, etag)] = data
        self._size += len(data)
        while self._size > self.max_total:
            _, evicted = self._objects.popitem(last=False)
            self._size -= len(evicted)


_worker_objects = ObjectCache()


def _list(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every object under a prefix (``ListObjectsV2``, all pages)."""
    from botocore.exceptions import ClientError

    try:
        return [
            item
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents", [])
        ]
    except ClientError as error:
        raise _InputError(f"cannot read s3://{bucket}/{prefix}: {error}") from error


def _download_prefix(
    s3: Any,
    uri: str,
    destination: Path,
    cache: ObjectCache | None = None,
    listing: list[dict[str, Any]] | None = None,
) -> int:
    """Download every object under an ``S3Prefix`` as SageMaker does; return the count.

    Keys keep their path relative to the prefix's last ``/``: the prefix
    ``s3://b/raw/City/x.csv`` gives ``x.csv``, ``s3://b/processed/.../train/`` gives
    ``train.csv`` for ``.../train/train.csv``. Objects already in ``cache`` (this
    worker's, by default) with the listed ETag are not read again. ``listing``: the
    objects of a wider prefix of the same bucket, already listed (saves a listing).
    """
    cache = _worker_objects if cache is None else cache
    from botocore.exceptions import ClientError

    bucket, prefix = _split_s3_uri(uri)
    base = prefix[: prefix.rfind("/") + 1]
    destination.mkdir(parents=True, exist_ok=True)
    count = 0
    if listing is None:
        listing = _list(s3, bucket, prefix)
    try:
        for item in (i for i in listing if i["Key"].startswith(prefix)):
            key = item["Key"]
            if key.endswith("/"):
                continue
            target = (destination / key[len(base) :]).resolve()
            if not target.is_relative_to(destination.resolve()):
                raise _InputError(f"S3 key {key!r} would be written outside {destination}")
            target.parent.mkdir(parents=True, exist_ok=True)
            etag = item.get("ETag", "")
            data = cache.get(bucket, key, etag) if etag else None
            if data is not None:
                target.write_bytes(data)
            elif etag and item.get("Size", cache.max_object + 1) <= cache.max_object:
                answer = s3.get_object(Bucket=bucket, Key=key)
                data = answer["Body"].read()
                target.write_bytes(data)
                # keyed by the ETag of the bytes read (the object may have changed
                # since the listing)
                cache.put(bucket, key, answer.get("ETag", ""), data)
            else:
                body = s3.get_object(Bucket=bucket, Key=key)["Body"]
                with target.open("wb") as out:
                    shutil.copyfileobj(body, out, 1 << 20)
            count += 1
    except ClientError as error:
        raise _InputError(f"cannot read {uri}: {error}") from error
    return count


def _download_processing_inputs(s3: Any, request: Mapping[str, Any], ml_root: Path) -> None:
    for item in request.get("ProcessingInputs", []):
        name = item.get("InputName", "?")
        source = item.get("S3Input")
        if source is None:
            raise _InputError(f"input {name!r}: the local stack reads S3Input inputs only")
        if source.get("S3DataType", "S3Prefix") != "S3Prefix":
            raise _InputError(f"input {name!r}: the local stack reads S3Prefix inputs only")
        if source.get("S3CompressionType", "None") != "None":
            raise _InputError(f"input {name!r}: the local stack reads uncompressed inputs only")
        local = source.get("LocalPath", "")
        if not local.startswith(PROCESSING_ROOT + "/"):
            raise _InputError(f"input {name!r}: LocalPath must be under {PROCESSING_ROOT}/")
        if _download_prefix(s3, source["S3Uri"], Path(host_path(local, ml_root))) == 0:
            raise _InputError(f"No objects exist under the S3 prefix {source['S3Uri']}")


def _download_training_inputs(
    s3: Any, request: Mapping[str, Any], ml_root: Path, region: str
) -> None:
    config_dir = ml_root / "input" / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    mode = request.get("AlgorithmSpecification", {}).get("TrainingInputMode", "File")
    channels: dict[str, dict[str, str]] = {}
    listings = _sibling_listings(s3, request.get("InputDataConfig", []))
    for channel in request.get("InputDataConfig", []):
        name = channel["ChannelName"]
        source = channel.get("DataSource", {}).get("S3DataSource")
        if source is None:
            raise _InputError(f"channel {name!r}: the local stack reads S3DataSource only")
        if source.get("S3DataType", "S3Prefix") != "S3Prefix":
            raise _InputError(f"channel {name!r}: the local stack reads S3Prefix sources only")
        if channel.get("CompressionType", "None") != "None":
            raise _InputError(f"channel {name!r}: the local stack reads uncompressed data only")
        uri = source["S3Uri"]
        listing = listings.get(uri)
        if _download_prefix(s3, uri, ml_root / "input" / "data" / name, listing=listing) == 0:
            bucket, _ = _split_s3_uri(uri)
            raise _InputError(
                f'No S3 objects found under S3 URL "{uri}" given in input data source. '
                f"Please ensure that the bucket exists in the selected region ({region}), "
                f'that objects exist under that S3 prefix, and that the role "'
                f'{request.get("RoleArn", "")}" has "s3:ListBucket" permissions on bucket '
                f'"{bucket}".'
            )
        settings = {
            "TrainingInputMode": channel.get("InputMode", mode),
            "S3DistributionType": source.get("S3DataDistributionType", "FullyReplicated"),
            "RecordWrapperType": channel.get("RecordWrapperType", "None"),
        }
        if "ContentType" in channel:
            settings["ContentType"] = channel["ContentType"]
        channels[name] = settings
    hyperparameters = request.get("HyperParameters", {})
    (config_dir / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config_dir / "inputdataconfig.json").write_text(json.dumps(channels))
    (config_dir / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]})
    )


def _sibling_listings(s3: Any, channels: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """One listing for the channels whose prefixes are folders of one parent folder.

    A training job's channels are usually siblings (``processed/{city}/{run}/train/``,
    ``.../validation/``, ``.../test/``): listing their parent once serves them all,
    one ``ListObjectsV2`` instead of one per channel. Returns channel URI → listing.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for channel in channels:
        source = channel.get("DataSource", {}).get("S3DataSource") or {}
        uri = str(source.get("S3Uri", ""))
        match = re.fullmatch(r"s3://([^/]+)/(.+/)[^/]+/", uri)
        if match is not None:
            groups.setdefault((match.group(1), match.group(2)), []).append(uri)
    listings: dict[str, list[dict[str, Any]]] = {}
    for (bucket, parent), uris in groups.items():
        if len(uris) > 1:
            listing = _list(s3, bucket, parent)
            listings.update(dict.fromkeys(uris, listing))
    return listings


def _upload_directory(s3: Any, local: Path, uri: str) -> int:
    bucket, prefix = _split_s3_uri(uri)
    prefix = prefix.rstrip("/")
    count = 0
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        key = "/".join(filter(None, [prefix, path.relative_to(local).as_posix()]))
        if path.stat().st_size <= _worker_objects.max_object:
            # small: one PutObject, whose ETag lets the next job take these bytes
            data = path.read_bytes()
            answer = s3.put_object(Bucket=bucket, Key=key, Body=data)
            _worker_objects.leave(bucket, key, answer.get("ETag", ""), data)
        else:
            s3.upload_file(str(path), bucket, key)
        count += 1
    return count


def _upload_processing_outputs(s3: Any, request: Mapping[str, Any], ml_root: Path) -> None:
    for output in request.get("ProcessingOutputConfig", {}).get("Outputs", []):
        target = output.get("S3Output")
        if target is None:
            continue  # FeatureStoreOutput: nothing the local stack models
        local = Path(host_path(target["LocalPath"], ml_root))
        if local.is_dir():
            _upload_directory(s3, local, target["S3Uri"])


def _upload_model(s3: Any, request: Mapping[str, Any], name: str, ml_root: Path) -> str:
    """Upload ``model/`` as SageMaker does; return ``S3ModelArtifacts``.

    SageMaker tars the container's ``/opt/ml/model`` into ``model.tar.gz``; a
    container that wrote exactly one ``model.tar.gz`` there (the local Linear
    Learner) has it uploaded as it is.
    """
    output_path = request["OutputDataConfig"]["S3OutputPath"].rstrip("/")
    model_dir = ml_root / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    files = [p for p in model_dir.rglob("*") if p.is_file()]
    if [p.relative_to(model_dir).as_posix() for p in files] == ["model.tar.gz"]:
        archive = files[0]
    else:
        archive = ml_root / "model.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for path in sorted(files):
                tar.add(path, arcname=path.relative_to(model_dir).as_posix())
    uri = f"{output_path}/{name}/output/model.tar.gz"
    bucket, key = _split_s3_uri(uri)
    s3.upload_file(str(archive), bucket, key)
    data_dir = ml_root / "output" / "data"
    if data_dir.is_dir() and any(p.is_file() for p in data_dir.rglob("*")):
        extra = ml_root / "output.tar.gz"
        with tarfile.open(extra, "w:gz") as tar:
            for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
                tar.add(path, arcname=path.relative_to(data_dir).as_posix())
        bucket, key = _split_s3_uri(f"{output_path}/{name}/output/output.tar.gz")
        s3.upload_file(str(extra), bucket, key)
    return uri


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


# -- request validation against botocore's SageMaker model -----------------------------


@cache
def _service_model() -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model("sagemaker")


@cache
def _compiled(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:  # a Java-only construct (\p{L}...): not checked locally
        return None


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def validate_request(operation: str, request: Mapping[str, Any]) -> None:
    """Validate a request as the SageMaker API does.

    Raises
    ------
    ValidationException
        With SageMaker's message: ``N validation error(s) detected: Value ... at
        'processingJobName' failed to satisfy constraint: ...``.
    """
    shape = _service_model().operation_model(operation).input_shape
    errors: list[str] = []
    _check(shape, request, "", errors)
    if errors:
        count = len(errors)
        plural = "error" if count == 1 else "errors"
        raise ValidationException(f"{count} validation {plural} detected: " + "; ".join(errors))


def _check(shape: Any, value: Any, path: str, errors: list[str]) -> None:
    kind = shape.type_name
    shown = "null" if value is None else f"'{value}'" if isinstance(value, str) else str(value)
    at = f"at '{path}'" if path else "in the request"

    def fail(constraint: str) -> None:
        errors.append(f"Value {shown} {at} failed to satisfy constraint: {constraint}")

    if kind == "structure":
        if not isinstance(value, dict):
            fail("Member must be a structure")
            return
        for name in shape.required_members:
            if value.get(name) is None:
                where = f"{path}.{_camel(name)}" if path else _camel(name)
                errors.append(
                    f"Value null at '{where}' failed to satisfy constraint: Member must not be null"
                )
        for name, member in shape.members.items():
            if value.get(name) is not None:
                where = f"{path}.{_camel(name)}" if path else _camel(name)
                _check(member, value[name], where, errors)
        return
    if kind == "list":
        if not isinstance(value, list):
            fail("Member must be a list")
            return
        _check_length(shape, len(value), fail)
        for index, item in enumerate(value, start=1):
            _check(shape.member, item, f"{path}.{index}.member", errors)
        return
    if kind == "map":
        if not isinstance(value, dict):
            fail("Member must be a map")
            return
        _check_length(shape, len(value), fail)
        for key, item in value.items():
            _check(shape.key, key, f"{path}.key", errors)
            _check(shape.value, item, f"{path}.{key}", errors)
        return
    if kind == "string":
        if not isinstance(value, str):
            fail("Member must be a string")
            return
        _check_length(shape, len(value), fail)
        enum = shape.metadata.get("enum")
        if enum and value not in enum:
            fail(f"Member must satisfy enum value set: [{', '.join(enum)}]")
        pattern = shape.metadata.get("pattern")
        compiled = _compiled(pattern) if pattern else None
        if compiled is not None and compiled.fullmatch(value) is None:
            fail(f"Member must satisfy regular expression pattern: {pattern}")
        return
    if kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            fail("Member must be an integer")
            return
        if "min" in shape.metadata and value < shape.metadata["min"]:
            fail(f"Member must have value greater than or equal to {shape.metadata['min']}")
        if "max" in shape.metadata and value > shape.metadata["max"]:
            fail(f"Member must have value less than or equal to {shape.metadata['max']}")
        return
    if kind == "boolean" and not isinstance(value, bool):
        fail("Member must be a boolean")
    elif kind in ("float", "double") and (
        isinstance(value, bool) or not isinstance(value, (int, float))
    ):
        fail("Member must be a number")


def _check_length(shape: Any, length: int, fail: Callable[[str], None]) -> None:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if low is not None and length < low:
        fail(f"Member must have length greater than or equal to {low}")
    if high is not None and length > high:
        fail(f"Member must have length less than or equal to {high}")


# -- the service ----------------------------------------------------------------------


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
    future: Future[_WorkerResult] | None = None
    pool: ProcessPoolExecutor | None = None
    job_dir: Path | None = None
    revision: int = 0

    def active(self) -> bool:
        return self.status in (IN_PROGRESS, STOPPING)

    def state(self) -> dict[str, Any]:
        """What a snapshot or the journal keeps of the job (not its worker)."""
        return {name: getattr(self, name) for name in _KEPT_FIELDS} | {
            "transitions": [dict(t) for t in self.transitions]
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

RESTARTED_MESSAGE: Final = "Restarting: the local stack stopped while the job ran"


_PREFIX = {PROCESSING: "Processing", TRAINING: "Training"}


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
        (:data:`DEFAULT_EXECUTORS`).
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
    >>> jobs.handle("CreateProcessingJob", {...})           # doctest: +SKIP
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
        self._mp_context = mp_context
        self._owns_work_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="citymodels-jobs-"))
        self._jobs: dict[tuple[str, str], _Job] = {}
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._pool: ProcessPoolExecutor | None = None
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
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            orphans = [j for j in self._jobs.values() if j.active() and j.future is None]
        if warm:
            self._warm(self._pool)
        for job in orphans:
            self._resume(job)

    def _warm(self, pool: ProcessPoolExecutor) -> None:
        # Each submit finds no idle worker and starts one: all start importing now.
        for _ in range(self.max_workers):
            pool.submit(_ping)

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.max_workers,
            mp_context=multiprocessing.get_context(self._mp_context),
            initializer=_init_worker,
            # the workers' shared folder: a job's small outputs, for the job reading them next
            initargs=(
                self.endpoint_url,
                self.region,
                self.credentials,
                str(self.work_dir / "handoff"),
            ),
        )

    def close(self) -> None:
        """Stop the workers (jobs in progress end with them) and remove the work dir."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if self._owns_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> JobService:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- the API

    def handle(self, operation: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """Serve one SageMaker API operation of :data:`OPERATIONS`.

        Parameters
        ----------
        operation
            ``CreateProcessingJob``, ``DescribeTrainingJob``...
        request
            The decoded JSON request.

        Returns
        -------
        dict
            The JSON response (times as epoch seconds, as botocore reads them).

        Raises
        ------
        SageMakerError
            The API's error answers.
        """
        if not isinstance(request, Mapping):
            raise SerializationException("the request body must be a JSON object")
        request = dict(request)
        kind = TRAINING if "Training" in operation else PROCESSING
        verb = operation.split(_PREFIX[kind], 1)[0]
        if operation not in OPERATIONS:
            raise ValidationException(f"the job service does not serve {operation}")
        if verb == "Create":
            return self.create(kind, request)
        if verb == "List":
            return self.list(kind, request)
        validate_request(operation, request)
        name = request[f"{_PREFIX[kind]}JobName"]
        if verb == "Describe":
            return self.describe(kind, name)
        self.stop(kind, name)
        return {}

    def create(self, kind: str, request: dict[str, Any]) -> dict[str, Any]:
        """``CreateProcessingJob`` / ``CreateTrainingJob``: record the job and start it."""
        prefix = _PREFIX[kind]
        validate_request(f"Create{prefix}Job", request)
        name = request[f"{prefix}JobName"]
        if JOB_NAME_PATTERN.fullmatch(name) is None:
            raise ValidationException(
                f"1 validation error detected: Value '{name}' at '{_camel(prefix)}JobName' "
                "failed to satisfy constraint: Member must satisfy regular expression "
                "pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}"
            )
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
            event = self._event(job)
            kept = job.state()
        self._record(kept)
        self._put(event)
        self._submit(job, image)
        return {f"{prefix}JobArn": arn}

    def describe(self, kind: str, name: str) -> dict[str, Any]:
        """``DescribeProcessingJob`` / ``DescribeTrainingJob``."""
        with self._lock:
            return self._describe(self._get(kind, name))

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
            event = self._event(job)
            kept = job.state()
        self._record(kept)
        self._put(event)
        if cancelled:
            self._finish(job, _WorkerResult(status=STOPPED, phases=[(STOPPED, time.time())]))

    def list(self, kind: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """``ListProcessingJobs`` / ``ListTrainingJobs`` (filters, sorting, paging)."""
        prefix = _PREFIX[kind]
        validate_request(f"List{prefix}Jobs", request)
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.kind == kind]
            summaries = [self._summary(j) for j in jobs if self._matches(j, request)]
        sort_by = request.get("SortBy", "CreationTime")
        sort_key = {
            "Name": f"{prefix}JobName",
            "Status": f"{prefix}JobStatus",
        }.get(sort_by, "CreationTime")
        summaries.sort(
            key=lambda s: s[sort_key], reverse=request.get("SortOrder", "Descending") != "Ascending"
        )
        start = int(request.get("NextToken") or 0)
        size = int(request.get("MaxResults") or 10)
        page = summaries[start : start + size]
        answer: dict[str, Any] = {f"{prefix}JobSummaries": page}
        if start + size < len(summaries):
            answer["NextToken"] = str(start + size)
        return answer

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
                    return self._describe(job)
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

    # -- persistence (a participant of :class:`~.persistence.StateStore`)

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
            self._finish(job, _WorkerResult(status=STOPPED, phases=[(STOPPED, time.time())]))
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
            self._finish(job, _crashed(error))
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

    def _executor(self, image: str) -> Executor | None:
        lowered = image.lower()
        for pattern, executor in self.executors:
            if pattern.lower() in lowered:
                return executor
        return None

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
        work = _WorkerJob(
            kind=job.kind,
            name=job.name,
            request=job.request,
            executor=self._executor(image),
            image=image,
            job_dir=str(job.job_dir),
            log_path=str(job.log_path),
            environment=environment,
            region=self.region,
        )
        try:
            with self._lock:
                if self._pool is None:
                    self._pool = self._new_pool()
                future = self._pool.submit(_run_job, work)
                job.future, job.pool = future, self._pool
        except (BrokenProcessPool, RuntimeError) as error:
            with self._lock:
                self._pool = self._new_pool()
            self._finish(job, _crashed(error))
            return
        future.add_done_callback(partial(self._hand_off, job))

    def _hand_off(self, job: _Job, future: Future[_WorkerResult]) -> None:
        # Done-callbacks run in the executor's manager thread; on Python 3.12+ that
        # thread holds the executor's shutdown lock while it fails the futures of a
        # broken pool. Finishing a job takes this service's lock (which ``_submit``
        # holds while it submits to that same executor) and posts the job's event: both
        # would stall or deadlock the manager thread, so the job is finished in a
        # thread of its own.
        threading.Thread(
            target=self._done, args=(job, future), name=f"finish-{job.name}", daemon=True
        ).start()

    def _done(self, job: _Job, future: Future[_WorkerResult]) -> None:
        if future.cancelled():
            return  # stop() finished it
        try:
            result = future.result()
        except BrokenProcessPool as error:
            # A worker died (killed, out of memory): the executor has already failed
            # every job of that pool and shut itself down; the first job to notice
            # replaces the pool for the jobs to come.
            with self._lock:
                if self._pool is not None and self._pool is job.pool:
                    self._pool = self._new_pool()
                    self._warm(self._pool)
            result = _crashed(error)
        except Exception as error:
            result = _crashed(error)
        self._finish(job, result)

    def _finish(self, job: _Job, result: _WorkerResult) -> None:
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
            event = self._event(job)
            job.future = job.pool = None
            self._changed.notify_all()
            kept = job.state()
        self._record(kept)
        self._put(event)
        if job.job_dir is not None and not self.keep_job_dirs:
            shutil.rmtree(job.job_dir, ignore_errors=True)

    # -- answers and events

    def _get(self, kind: str, name: str) -> _Job:
        job = self._jobs.get((kind, name))
        if job is None:
            raise ValidationException(f"Could not find {kind} job '{self.arn(kind, name)}'.")
        return job

    @staticmethod
    def _matches(job: _Job, request: Mapping[str, Any]) -> bool:
        contains = request.get("NameContains")
        if contains and contains.lower() not in job.name.lower():
            return False
        if request.get("StatusEquals") and job.status != request["StatusEquals"]:
            return False
        bounds = (
            ("CreationTimeAfter", job.created, 1),
            ("CreationTimeBefore", job.created, -1),
            ("LastModifiedTimeAfter", job.modified, 1),
            ("LastModifiedTimeBefore", job.modified, -1),
        )
        for name, when, sign in bounds:
            limit = request.get(name)
            if limit is not None and (when - float(limit)) * sign <= 0:
                return False
        return True

    def _summary(self, job: _Job) -> dict[str, Any]:
        prefix = _PREFIX[job.kind]
        summary: dict[str, Any] = {
            f"{prefix}JobName": job.name,
            f"{prefix}JobArn": job.arn,
            "CreationTime": job.created,
            "LastModifiedTime": job.modified,
            f"{prefix}JobStatus": job.status,
        }
        if job.ended is not None:
            summary[f"{prefix}EndTime"] = job.ended
        if job.kind == TRAINING:
            summary["SecondaryStatus"] = job.secondary
        else:
            if job.failure_reason:
                summary["FailureReason"] = job.failure_reason
            if job.exit_message:
                summary["ExitMessage"] = job.exit_message
        return summary

    def _describe(self, job: _Job) -> dict[str, Any]:
        request = job.request
        answer: dict[str, Any]
        if job.kind == PROCESSING:
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
            answer["ProcessingJobArn"] = job.arn
            answer["ProcessingJobStatus"] = job.status
            if job.exit_message is not None:
                answer["ExitMessage"] = job.exit_message
            if job.failure_reason is not None:
                answer["FailureReason"] = job.failure_reason
            if job.ended is not None:
                answer["ProcessingEndTime"] = job.ended
            if job.started is not None:
                answer["ProcessingStartTime"] = job.started
            answer["LastModifiedTime"] = job.modified
            answer["CreationTime"] = job.created
            return answer
        answer = {"TrainingJobName": job.name, "TrainingJobArn": job.arn}
        answer["ModelArtifacts"] = (
            {"S3ModelArtifacts": job.model_artifacts} if job.model_artifacts else {}
        )
        answer["TrainingJobStatus"] = job.status
        answer["SecondaryStatus"] = job.secondary
        if job.failure_reason is not None:
            answer["FailureReason"] = job.failure_reason
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
        answer["CreationTime"] = job.created
        if job.started is not None:
            answer["TrainingStartTime"] = job.started
        if job.ended is not None:
            answer["TrainingEndTime"] = job.ended
            if job.started is not None:
                seconds = max(1, round(job.ended - job.started))
                answer["TrainingTimeInSeconds"] = seconds
                answer["BillableTimeInSeconds"] = seconds
        answer["LastModifiedTime"] = job.modified
        answer["SecondaryStatusTransitions"] = [dict(t) for t in job.transitions]
        if job.final_metrics:
            answer["FinalMetricDataList"] = [dict(m) for m in job.final_metrics]
        answer["EnableNetworkIsolation"] = bool(request.get("EnableNetworkIsolation", False))
        answer["EnableInterContainerTrafficEncryption"] = bool(
            request.get("EnableInterContainerTrafficEncryption", False)
        )
        answer["EnableManagedSpotTraining"] = bool(request.get("EnableManagedSpotTraining", False))
        if "Environment" in request:
            answer["Environment"] = request["Environment"]
        return answer

    def _event(self, job: _Job) -> dict[str, Any]:
        """The job's state-change event now (a ``PutEvents`` entry)."""
        described = self._describe(job)
        if job.kind == PROCESSING:
            # SageMaker sends processing times as numbers of epoch milliseconds.
            detail = _times_in_ms(described, as_string=False)
        else:
            # ...and training times as strings of epoch milliseconds, Tags as a map.
            detail = _times_in_ms(described, as_string=True)
            detail.setdefault("VpcConfig", {})
            detail["Tags"] = {t["Key"]: t["Value"] for t in job.request.get("Tags", [])}
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
        if job.kind == PROCESSING:
            detail.setdefault("ExperimentConfig", {})
        return {
            "Source": "aws.sagemaker",
            "DetailType": DETAIL_TYPES[job.kind],
            "Detail": json.dumps(detail),
            "Resources": [job.arn],
            "Time": time.time(),
        }

    def _put(self, event: dict[str, Any]) -> None:
        if self.events is None:
            return
        try:
            self.events.put_events([event])
        except Exception:  # an event bus failure must not lose the job's state
            logger.exception("could not put a job state-change event")


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


def _crashed(error: BaseException) -> _WorkerResult:
    return _WorkerResult(
        status=FAILED,
        phases=[(FAILED, time.time())],
        failure_reason=_clip(
            f"InternalServerError: the local job worker failed: {type(error).__name__}: {error}"
        ),
    )
