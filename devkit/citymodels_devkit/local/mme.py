"""The local multi-model endpoint (MME): the inference pipeline with SageMaker's MME semantics.

:class:`MultiModelEndpoint` behaves like a SageMaker endpoint running the inference
pipeline [scikit-learn preprocessor container → Linear Learner in MultiModel mode]
(docs/design.md §4): the local stack's ASGI front calls :meth:`MultiModelEndpoint.invoke` for
every ``POST /endpoints/{name}/invocations`` and sends :meth:`InvokeResult.render`'s
answer back, which boto3's ``sagemaker-runtime`` client parses like AWS's.

**The pipeline.** The preprocessor is loaded once, from its artifact (``model.tar.gz``
holding ``preprocessor.json`` and ``code/inference.py`` with ``code/citymodels/``),
exactly as the scikit-learn container does it: ``code/inference.py`` is imported from the
extracted directory, ``model_fn(model_dir)`` runs once, then every request goes through
``input_fn`` → ``predict_fn`` → ``output_fn`` (CSV, the container's
``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT``), and the CSV goes to the target model's
:meth:`~citymodels_devkit.linear_learner.LinearLearnerModel.invoke`.

**The MME.** A target model is loaded on its first call and kept in two tiers:

- *memory*: loaded models, least recently used first out. A load evicts until the new
  model fits every configured bound: ``max_models``, ``max_memory_mb`` (sum of the
  loaded models' sizes, see :func:`estimate_model_bytes`) and ``high_water_mark`` (the
  ``MemoryUtilization`` the load would cause). A model bigger than the bounds on its own
  still loads, alone.
- *disk*: the downloaded artifacts in ``cache_dir``. A model evicted from memory reloads
  from disk without a new download, as on SageMaker; the disk tier is bounded by
  ``disk_capacity_mb`` (artifacts of unloaded models go first, least recently used).

Concurrent first calls for one model share one download and one load (single flight).
Loads run on background threads: a request that waits longer than ``load_wait_seconds``
gets ``ModelNotReadyException`` (429) while the load carries on, and later calls succeed.

**Errors** (the wire format is in :meth:`InvokeResult.render`):

====================================  ============  ====================================
what                                  HTTP / code   detail
====================================  ============  ====================================
bad TargetModel, body over 6 MB       400 ValidationError
artifact missing or not downloadable  400 ValidationError  "Failed to download model data ... for target model ..."
artifact not a loadable model         424 ModelError   OriginalStatusCode 500, from ``linear-learner``
preprocessor rejects the rows         424 ModelError   OriginalStatusCode 400, from ``preprocessor``; the message names row and field
Linear Learner rejects the features   424 ModelError   OriginalStatusCode 400, from ``linear-learner``
still loading after the wait          429 ModelNotReadyException
====================================  ============  ====================================

One deliberate difference from AWS: the real scikit-learn container (sagemaker-containers'
``Transformer``) maps only ``UnsupportedFormatError`` to a 4xx; a ``ValueError`` from
``input_fn`` becomes Flask's HTML ``500 Internal Server Error``, so on AWS the caller gets
ModelError with OriginalStatusCode 500 and no field name. Locally it is 400 with the
preprocessor's message, which is what the container means. Clients must not rely on
either: the predict function validates rows before it calls the endpoint.

**Metrics** (:meth:`MultiModelEndpoint.drain_metrics`), under their AWS names, units and
dimensions (``EndpointName``, ``VariantName``): in ``AWS/SageMaker`` the per-invocation
``Invocations``, ``ModelCacheHit`` (1 hit, 0 miss: Average is the hit ratio),
``ModelLatency``, ``Invocation4XXErrors``, ``Invocation5XXErrors`` and, when they happen,
``ModelLoadingWaitTime``, ``ModelDownloadingTime``, ``ModelLoadingTime``,
``ModelUnloadingTime`` (microseconds), as statistic sets; in ``/aws/sagemaker/Endpoints``
the gauges ``LoadedModelCount``, ``MemoryUtilization`` and ``DiskUtilization`` (percent),
sampled when drained.

The hot path (a loaded model) takes no lock but one short critical section for the LRU
order and the metric sums, logs nothing and copies nothing.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import io
import json
import logging
import math
import os
import re
import shutil
import sys
import tarfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from citymodels_devkit.archives import extract_safely
from citymodels_devkit.linear_learner import InferenceError, LinearLearnerModel, load_model
from citymodels_devkit.paths import load_container_module

if TYPE_CHECKING:
    from citymodels_devkit.local.stack import LocalOptions

__all__ = [
    "ENDPOINTS_NAMESPACE",
    "MAX_BODY_BYTES",
    "MAX_TARGET_MODEL_LENGTH",
    "SAGEMAKER_NAMESPACE",
    "EndpointOptions",
    "EndpointStats",
    "InvokeResult",
    "ModelArtifactMissing",
    "MultiModelEndpoint",
    "estimate_model_bytes",
]

log = logging.getLogger("citymodels.local.mme")

SAGEMAKER_NAMESPACE: Final = "AWS/SageMaker"
"""Namespace of the invocation and model-loading metrics."""
ENDPOINTS_NAMESPACE: Final = "/aws/sagemaker/Endpoints"
"""Namespace of the instance metrics (LoadedModelCount, Memory/DiskUtilization)."""
MAX_TARGET_MODEL_LENGTH: Final = 1024
"""InvokeEndpoint's limit on TargetModel (botocore's service model)."""
MAX_BODY_BYTES: Final = 6 * 1024 * 1024
"""InvokeEndpoint's limit on the request body (botocore's service model: 6 MB)."""

_MB: Final = 1024 * 1024
_JSON: Final = "application/json"
_PIPELINE_ACCEPT: Final = "text/csv"  # the preprocessor's SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT
_DISK_FILE: Final = re.compile(r"[0-9a-f]{64}\.tar\.gz(?:\.part)?")


class ModelArtifactMissing(LookupError):
    """Raised by ``fetch_model`` when the target model's artifact does not exist.

    Parameters
    ----------
    location
        Where the artifact was looked for, e.g. ``s3://bucket/mme/City/v.tar.gz``; it is
        quoted in the ValidationError the caller gets.
    """

    def __init__(self, location: str = "") -> None:
        super().__init__(location)
        self.location = location


class InvokeResult(NamedTuple):
    """One InvokeEndpoint answer: success or one of the MME's errors.

    Immutable (a named tuple: built on every request, it must cost next to nothing; a
    frozen dataclass costs ~2 µs here), and shared by every request waiting on one
    failed load.

    Attributes
    ----------
    status
        HTTP status: 200, or 400 (ValidationError), 424 (ModelError), 429
        (ModelNotReadyException).
    body
        The response body: the model's answer, or the error's JSON document.
    content_type
        The body's media type.
    headers
        Further response headers (lower-case names, ready for ASGI), e.g.
        ``x-amzn-invoked-production-variant`` or ``x-amzn-errortype``.
    error_code
        ``None`` on success, else the error code botocore reports as
        ``response["Error"]["Code"]``.
    message
        The error message (``response["Error"]["Message"]``), ``None`` on success.
    original_status_code
        A ModelError's ``OriginalStatusCode`` (the failing container's status).
    """

    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[bytes, bytes], ...] = ()
    error_code: str | None = None
    message: str | None = None
    original_status_code: int | None = None

    @property
    def ok(self) -> bool:
        """Whether this is a successful answer (HTTP 200)."""
        return self.status == 200

    def render(self, request_id: str | None = None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Return the HTTP response: status, headers, body.

        The wire format is sagemaker-runtime's (``rest-json``): an error carries its code in
        ``x-amzn-ErrorType`` and a JSON body with ``Message``; a ModelError's body also has
        ``OriginalStatusCode``, ``OriginalMessage``, ``LogStreamArn`` and ``ErrorCode``,
        which botocore puts at the top level of ``ClientError.response``. A success
        carries ``x-Amzn-Invoked-Production-Variant``.

        Parameters
        ----------
        request_id
            The ``x-amzn-RequestId`` header; a random UUID when omitted.

        Returns
        -------
        tuple of (int, list of (bytes, bytes), bytes)
            Status, headers (lower-case names, as ASGI's ``http.response.start`` wants)
            and body.
        """
        headers = [
            (b"content-type", self.content_type.encode("latin-1")),
            *self.headers,
            (b"content-length", str(len(self.body)).encode()),
            (b"x-amzn-requestid", (request_id or str(uuid.uuid4())).encode("latin-1")),
        ]
        return self.status, headers, self.body

    @classmethod
    def error(cls, status: int, code: str, message: str, **fields: Any) -> InvokeResult:
        """Build an error answer with ``code`` (botocore's ``Error.Code``) and a message.

        Parameters
        ----------
        status
            The HTTP status (400 ValidationError, 424 ModelError, 429 ModelNotReadyException).
        code
            The error code, sent in ``x-amzn-ErrorType``.
        message
            The error message (``Message`` in the body).
        **fields
            Further members of the error document (ModelError's ``OriginalStatusCode``...).
        """
        document = {"Message": message, **fields}
        return cls(
            status=status,
            body=json.dumps(document).encode(),
            content_type=_JSON,
            headers=((b"x-amzn-errortype", code.encode()),),
            error_code=code,
            message=message,
            original_status_code=fields.get("OriginalStatusCode"),
        )

    @classmethod
    def validation_error(cls, message: str) -> InvokeResult:
        """A 400 ``ValidationError`` (also for the front's own checks, e.g. unknown endpoint)."""
        return cls.error(400, "ValidationError", message)


@dataclass(frozen=True)
class EndpointStats:
    """Counters and tiers of a :class:`MultiModelEndpoint` since it started.

    Attributes
    ----------
    loaded_models
        Target models in memory, least recently used first.
    disk_models
        Target models whose artifact is in the disk tier, least recently used first.
    loads
        Models loaded into memory (from a download or from disk).
    downloads
        Artifacts fetched (``fetch_model`` calls that returned bytes).
    evictions
        Models unloaded from memory to make room.
    hits, misses
        Invocations whose model was / was not loaded when they arrived.
    not_ready
        Invocations answered with ModelNotReadyException.
    load_failures
        Loads that failed (missing or corrupt artifact).
    memory_bytes, disk_bytes
        Sizes of the memory tier (model estimates) and the disk tier (artifact bytes).
    memory_utilization, disk_utilization
        The ``MemoryUtilization`` and ``DiskUtilization`` metrics (percent) now.
    """

    loaded_models: tuple[str, ...]
    disk_models: tuple[str, ...]
    loads: int
    downloads: int
    evictions: int
    hits: int
    misses: int
    not_ready: int
    load_failures: int
    memory_bytes: int
    disk_bytes: int
    memory_utilization: float
    disk_utilization: float


def estimate_model_bytes(model: object) -> int:
    """Estimate the memory a loaded model holds: its whole object graph, in CPython bytes.

    ``sys.getsizeof`` of the model and of every object reachable from it (dataclass
    fields, tuples and dicts of weights, hyperparameters and metrics, their floats and
    strings), each object counted once. Shared interned objects (small ints, short
    strings) are counted too, so this is a slight overestimate. A trained local Linear
    Learner model (ten features, its hyperparameters and metrics) is about 5 KB.

    Parameters
    ----------
    model
        A loaded model (any Python object).

    Returns
    -------
    int
        Bytes.
    """
    seen: set[int] = set()
    total = 0
    pending: list[object] = [model]
    while pending:
        obj = pending.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            pending.extend(obj.keys())
            pending.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            pending.extend(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type | ModuleType):
            pending.append(vars(obj))
    return total


class _Stat:
    """A CloudWatch statistic set being accumulated."""

    __slots__ = ("count", "maximum", "minimum", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        if value < self.minimum:
            self.minimum = value
        if value > self.maximum:
            self.maximum = value

    def values(self) -> dict[str, float]:
        """CloudWatch's ``StatisticValues``."""
        return {
            "SampleCount": float(self.count),
            "Sum": self.total,
            "Minimum": self.minimum if self.count else 0.0,
            "Maximum": self.maximum if self.count else 0.0,
        }


class _Window:
    """The ``AWS/SageMaker`` metrics since the last drain.

    The per-invocation 0/1 metrics are plain counters (their statistic sets follow from
    the number of samples and of ones); durations are full statistic sets.
    """

    __slots__ = (
        "cache_hits",
        "cache_samples",
        "downloading",
        "errors_4xx",
        "errors_5xx",
        "invocations",
        "latency",
        "loading",
        "outcomes",
        "unloading",
        "waiting",
    )

    def __init__(self) -> None:
        self.invocations = 0
        self.cache_samples = 0
        self.cache_hits = 0
        self.outcomes = 0  # invocations that reached a container: the 4XX/5XX samples
        self.errors_4xx = 0
        self.errors_5xx = 0
        self.latency = _Stat()
        self.waiting = _Stat()
        self.downloading = _Stat()
        self.loading = _Stat()
        self.unloading = _Stat()

    def statistic_sets(self) -> list[tuple[str, str, dict[str, float]]]:
        """Return (metric name, unit, StatisticValues) for the metrics that had samples."""
        sets = [
            ("Invocations", "None", _ones(self.invocations, self.invocations)),
            ("ModelCacheHit", "None", _ones(self.cache_samples, self.cache_hits)),
            ("ModelLatency", "Microseconds", self.latency.values()),
            ("Invocation4XXErrors", "None", _ones(self.outcomes, self.errors_4xx)),
            ("Invocation5XXErrors", "None", _ones(self.outcomes, self.errors_5xx)),
            ("ModelLoadingWaitTime", "Microseconds", self.waiting.values()),
            ("ModelDownloadingTime", "Microseconds", self.downloading.values()),
            ("ModelLoadingTime", "Microseconds", self.loading.values()),
            ("ModelUnloadingTime", "Microseconds", self.unloading.values()),
        ]
        return [(name, unit, values) for name, unit, values in sets if values["SampleCount"]]


def _ones(samples: int, ones: int) -> dict[str, float]:
    """The statistic set of ``samples`` values that are 1 ``ones`` times and 0 otherwise."""
    return {
        "SampleCount": float(samples),
        "Sum": float(ones),
        "Minimum": 1.0 if samples and ones == samples else 0.0,
        "Maximum": 1.0 if ones else 0.0,
    }


@dataclass(frozen=True, slots=True)
class _Entry:
    """A model in the memory tier."""

    model: LinearLearnerModel
    nbytes: int


class _LoadFailed(Exception):
    """A load failed; every request waiting on it answers with ``result``."""

    def __init__(self, result: InvokeResult) -> None:
        super().__init__(result.message)
        self.result = result


@dataclass(frozen=True)
class _Preprocessor:
    """The pipeline's first container: its handler module and the model ``model_fn`` built."""

    module: ModuleType
    model: object
    model_dir: Path


@dataclass(frozen=True)
class EndpointOptions:
    """How a :class:`MultiModelEndpoint` runs: its bounds, its instance, its waits.

    Attributes
    ----------
    max_models
        At most this many models in memory (``None``: no count bound).
    max_memory_mb
        At most this many MB of loaded models in memory (``None``: no such bound); a
        model's size is :func:`estimate_model_bytes` plus ``model_overhead_mb``.
    instance_memory_mb
        The instance's memory, the denominator of ``MemoryUtilization`` (default 16 GiB,
        an ml.m5.xlarge).
    baseline_memory_mb
        Memory used with no model loaded (the process, the containers).
    high_water_mark
        ``MemoryUtilization`` (percent) a load may not push the instance above: models
        are evicted before it would.
    model_overhead_mb
        Added to every model's size estimate, to stand for the per-model memory of a real
        container (a Linear Learner model in its container costs far more than its
        weights); 0 by default.
    disk_capacity_mb
        Size of the disk tier's volume, the denominator of ``DiskUtilization``.
    load_wait_seconds
        How long a request waits for its model to download and load before it gets
        ModelNotReadyException (SageMaker waits 60 s).
    load_delay_seconds
        Test hook: every load sleeps this long (a slow download or LoadModel), to
        exercise ModelNotReadyException.
    load_workers
        Threads loading models in the background.
    variant_name
        The production variant (``x-Amzn-Invoked-Production-Variant``, ``VariantName``).
    container_hostnames
        The pipeline's ``ContainerHostname`` values (the template's), named in ModelError
        messages.
    region, account_id
        Named in ModelError messages and ``LogStreamArn``.
    clock
        Seconds, monotonic: measures the metrics' durations.
    wall_clock
        Seconds since the epoch: the metrics' timestamps.

    Raises
    ------
    ValueError
        A bound, size, wait or percentage out of its range.
    """

    max_models: int | None = None
    max_memory_mb: float | None = None
    instance_memory_mb: float = 16 * 1024
    baseline_memory_mb: float = 0.0
    high_water_mark: float = 90.0
    model_overhead_mb: float = 0.0
    disk_capacity_mb: float = 30 * 1024
    load_wait_seconds: float = 60.0
    load_delay_seconds: float = 0.0
    load_workers: int = 4
    variant_name: str = "AllTraffic"
    container_hostnames: tuple[str, str] = ("preprocessor", "linear-learner")
    region: str = "us-east-1"
    account_id: str = "123456789012"
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if self.max_models is not None and self.max_models < 1:
            raise ValueError(f"max_models must be at least 1, got {self.max_models}")
        if self.max_memory_mb is not None and self.max_memory_mb <= 0:
            raise ValueError(f"max_memory_mb must be positive, got {self.max_memory_mb}")
        if self.instance_memory_mb <= 0 or self.disk_capacity_mb <= 0:
            raise ValueError("instance_memory_mb and disk_capacity_mb must be positive")
        if not 0 < self.high_water_mark <= 100:
            raise ValueError(
                f"high_water_mark is a percentage in (0, 100], got {self.high_water_mark}"
            )
        if self.load_wait_seconds < 0 or self.load_delay_seconds < 0 or self.baseline_memory_mb < 0:
            raise ValueError("load_wait_seconds, load_delay_seconds and baseline_memory_mb >= 0")

    @classmethod
    def from_local(
        cls, options: LocalOptions, *, container_hostnames: tuple[str, str]
    ) -> EndpointOptions:
        """The endpoint options of a local stack run with ``options``.

        Parameters
        ----------
        options
            The stack's options (``mme_max_models``, ``instance_memory_mb``...).
        container_hostnames
            The template's ``ContainerHostname`` values of the pipeline.
        """
        return cls(
            max_models=options.mme_max_models,
            max_memory_mb=options.mme_max_memory_mb,
            instance_memory_mb=options.instance_memory_mb,
            baseline_memory_mb=options.baseline_memory_mb,
            model_overhead_mb=options.model_overhead_mb,
            load_wait_seconds=options.load_wait_seconds,
            load_delay_seconds=options.load_delay_seconds,
            container_hostnames=container_hostnames,
        )


class MultiModelEndpoint:
    """A local SageMaker multi-model endpoint serving [preprocessor → Linear Learner].

    Parameters
    ----------
    name
        The endpoint name (metrics' ``EndpointName``, log group, messages).
    fetch_model
        ``fetch_model(target_model)`` returns the artifact bytes of a target model (the
        local stack reads ``s3://{DataBucket}/mme/{target_model}``). It raises
        :class:`ModelArtifactMissing` when there is none; any other exception is a failed
        download. Called on a background thread, at most once at a time per model.
    preprocessor
        The preprocessor model: its ``model.tar.gz`` (path or bytes), or a directory
        holding its extracted content. A directory without ``code/inference.py`` uses the
        repository's ``preprocessing/inference.py``.
    cache_dir
        The disk tier (``models/``) and the extracted preprocessor (``preprocessor/``,
        replaced at start). Created if missing; model artifacts left in ``models/`` by an
        earlier endpoint are removed (a fresh instance starts with an empty disk).
    options
        Bounds, instance, waits (:class:`EndpointOptions`; its defaults if omitted).
    """

    def __init__(
        self,
        name: str,
        *,
        fetch_model: Callable[[str], bytes],
        preprocessor: str | os.PathLike[str] | bytes,
        cache_dir: str | os.PathLike[str],
        options: EndpointOptions | None = None,
    ) -> None:
        options = options or EndpointOptions()
        self.name = name
        self.options = options
        self.variant_name = options.variant_name
        self._fetch = fetch_model
        self._max_memory_bytes = (
            None if options.max_memory_mb is None else options.max_memory_mb * _MB
        )
        self._instance_bytes = options.instance_memory_mb * _MB
        self._baseline_bytes = options.baseline_memory_mb * _MB
        self._disk_capacity_bytes = options.disk_capacity_mb * _MB
        self._overhead_bytes = int(options.model_overhead_mb * _MB)
        self._clock = options.clock
        self._log_group = f"/aws/sagemaker/Endpoints/{name}"

        cache_dir = Path(cache_dir)
        self._models_dir = cache_dir / "models"
        self._models_dir.mkdir(parents=True, exist_ok=True)
        for stale in self._models_dir.iterdir():
            # Only files this class writes (a hex digest name): a fresh instance starts
            # with an empty disk, and nothing else in the directory is touched.
            if _DISK_FILE.fullmatch(stale.name):
                stale.unlink(missing_ok=True)
        self._pre = _load_preprocessor(preprocessor, cache_dir / "preprocessor")
        self._pre_input_fn = self._pre.module.input_fn
        self._pre_predict_fn = self._pre.module.predict_fn
        self._pre_output_fn = self._pre.module.output_fn
        self._ok_headers: tuple[tuple[bytes, bytes], ...] = (
            (b"x-amzn-invoked-production-variant", self.variant_name.encode("latin-1")),
        )

        # Everything below is guarded by _lock, which is never held during I/O or a load.
        # _models is read without it on the hot path: a dict lookup is atomic under the GIL.
        self._lock = threading.Lock()
        self._models: OrderedDict[str, _Entry] = OrderedDict()
        self._loading: dict[str, Future[_Entry]] = {}
        self._disk: OrderedDict[str, int] = OrderedDict()
        self._memory_bytes = 0
        self._disk_bytes = 0
        self._window = _Window()
        self._loads = 0
        self._downloads = 0
        self._evictions = 0
        self._hits = 0
        self._misses = 0
        self._not_ready = 0
        self._load_failures = 0
        self._executor = ThreadPoolExecutor(
            max_workers=options.load_workers, thread_name_prefix=f"mme-{name}-load"
        )

    # -- invocation -------------------------------------------------------------------

    def invoke(
        self, target_model: str, body: bytes, content_type: str, accept: str = _JSON
    ) -> InvokeResult:
        """Answer one InvokeEndpoint request for ``target_model``. Thread-safe.

        Parameters
        ----------
        target_model
            The ``X-Amzn-SageMaker-Target-Model`` header: ``{city}/{version}.tar.gz``,
            relative to the endpoint's model data prefix.
        body
            The request body: raw house rows, ``text/csv`` or ``application/json``.
        content_type
            The request's Content-Type.
        accept
            The wanted response type (Linear Learner's: ``application/json`` — also for
            ``""`` and ``*/*`` — or ``application/jsonlines``).

        Returns
        -------
        InvokeResult
            Linear Learner's answer (``{"predictions": [{"score": ...}]}``), or one of the
            errors in the module docstring. Never raises for a request's content.
        """
        started = self._clock()
        if len(body) > MAX_BODY_BYTES:
            return self._rejected(
                f"1 validation error detected: Value at 'body' failed to satisfy constraint: "
                f"Member must have length less than or equal to {MAX_BODY_BYTES}"
            )
        entry = self._models.get(target_model)
        if entry is None:
            return self._invoke_cold(target_model, body, content_type, accept, started)
        result = self._run_pipeline(entry.model, body, content_type, accept)
        latency = (self._clock() - started) * 1e6
        with self._lock:
            if target_model in self._models:  # else evicted meanwhile; this request had it
                self._models.move_to_end(target_model)
            self._hits += 1
            window = self._window
            window.invocations += 1
            window.cache_samples += 1
            window.cache_hits += 1
            window.latency.add(latency)
            window.outcomes += 1
            if result.original_status_code is not None:
                self._count_error(window, result.original_status_code)
        return result

    def _invoke_cold(
        self, target_model: str, body: bytes, content_type: str, accept: str, started: float
    ) -> InvokeResult:
        problem = _target_model_problem(target_model)
        if problem is not None:
            return self._rejected(problem)
        pending = self._entry_or_flight(target_model)
        if isinstance(pending, _Entry):  # loaded since the lock-free look: a hit after all
            return self._serve(target_model, pending, body, content_type, accept, started, hit=True)
        try:
            entry = pending.result(timeout=self.options.load_wait_seconds)
        except FutureTimeoutError:
            return self._not_ready_result(target_model, started)
        except _LoadFailed as failure:
            waited = (self._clock() - started) * 1e6
            with self._lock:
                self._misses += 1
                window = self._window
                window.invocations += 1
                window.cache_samples += 1
                window.waiting.add(waited)
                if failure.result.original_status_code is not None:  # a model that failed to load
                    window.outcomes += 1
                    self._count_error(window, failure.result.original_status_code)
            return failure.result
        return self._serve(target_model, entry, body, content_type, accept, started, hit=False)

    def _entry_or_flight(self, target_model: str) -> _Entry | Future[_Entry]:
        """Return the loaded model, or the load everyone waiting for it shares (started here)."""
        with self._lock:
            entry = self._models.get(target_model)
            if entry is not None:
                return entry
            future = self._loading.get(target_model)
            if future is None:
                future = self._executor.submit(self._load, target_model)
                self._loading[target_model] = future
            return future

    def _serve(
        self,
        target_model: str,
        entry: _Entry,
        body: bytes,
        content_type: str,
        accept: str,
        started: float,
        *,
        hit: bool,
    ) -> InvokeResult:
        """Run the pipeline for a request that found (hit) or waited for (miss) its model."""
        model_started = self._clock()
        waited = (model_started - started) * 1e6
        result = self._run_pipeline(entry.model, body, content_type, accept)
        latency = (self._clock() - model_started) * 1e6
        with self._lock:
            if target_model in self._models:
                self._models.move_to_end(target_model)
            window = self._window
            window.invocations += 1
            window.cache_samples += 1
            if hit:
                self._hits += 1
                window.cache_hits += 1
            else:
                self._misses += 1
                window.waiting.add(waited)
            window.latency.add(latency)
            window.outcomes += 1
            if result.original_status_code is not None:
                self._count_error(window, result.original_status_code)
        return result

    def _run_pipeline(
        self, model: LinearLearnerModel, body: bytes, content_type: str, accept: str
    ) -> InvokeResult:
        # Container 1: the scikit-learn container's default transform (input, predict, output).
        try:
            rows = self._pre_input_fn(body, content_type)
            encoded = self._pre_predict_fn(rows, self._pre.model)
            features, features_type = self._pre_output_fn(encoded, _PIPELINE_ACCEPT)
        except ValueError as err:
            return self._model_error(0, 400, str(err))
        except Exception as err:
            return self._model_error(0, 500, f"{type(err).__name__}: {err}")
        if isinstance(features, str):
            features = features.encode()
        # Container 2: Linear Learner, serving the target model.
        try:
            answer, answer_type = model.invoke(features, features_type, accept or _JSON)
        except InferenceError as err:
            return self._model_error(1, 400, str(err))
        except Exception as err:
            return self._model_error(1, 500, f"{type(err).__name__}: {err}")
        return InvokeResult(200, answer, answer_type, self._ok_headers)

    @staticmethod
    def _count_error(window: _Window, original_status_code: int) -> None:
        # Under _lock. Invocation4XX/5XXErrors count what the model (a container) answered.
        if original_status_code >= 500:
            window.errors_5xx += 1
        elif original_status_code >= 400:
            window.errors_4xx += 1

    def _rejected(self, message: str) -> InvokeResult:
        with self._lock:
            self._window.invocations += 1
        return InvokeResult.validation_error(message)

    def _not_ready_result(self, target_model: str, started: float) -> InvokeResult:
        waited = (self._clock() - started) * 1e6
        with self._lock:
            self._misses += 1
            self._not_ready += 1
            window = self._window
            window.invocations += 1
            window.cache_samples += 1
            window.waiting.add(waited)
        return InvokeResult.error(
            429,
            "ModelNotReadyException",
            f"Model {target_model} is not ready: it is still being downloaded or loaded "
            f"after {self.options.load_wait_seconds:g} s. Retry the request.",
        )

    def _model_error(self, container: int, original_status: int, message: str) -> InvokeResult:
        kind = "client" if original_status < 500 else "server"
        options = self.options
        region, account_id = options.region, options.account_id
        console = (
            f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}"
            f"#logEventViewer:group={self._log_group}"
        )
        return InvokeResult.error(
            424,
            "ModelError",
            f"Received {kind} error ({original_status}) from "
            f"{options.container_hostnames[container]} "
            f'with message "{message}". See {console} in account {account_id} '
            "for more information.",
            OriginalStatusCode=original_status,
            OriginalMessage=message,
            LogStreamArn=f"arn:aws:logs:{region}:{account_id}:log-group:{self._log_group}",
            ErrorCode=f"{kind.upper()}_ERROR_FROM_MODEL",
        )

    # -- loading ----------------------------------------------------------------------

    def _load(self, target_model: str) -> _Entry:
        """Download (or read from disk) and load one model; runs on a loader thread."""
        try:
            entry = self._load_entry(target_model)
        except BaseException as err:
            with self._lock:
                self._loading.pop(target_model, None)
                self._load_failures += 1
            if isinstance(err, _LoadFailed) or not isinstance(err, Exception):
                raise
            # Not the artifact's fault (a full disk, a bug): the service's own 500.
            log.exception("loading target model %s failed", target_model)
            raise _LoadFailed(
                InvokeResult.error(500, "InternalFailure", f"Loading {target_model} failed: {err}")
            ) from err
        with self._lock:
            # Insertion and the end of the single flight are one step: a request arriving
            # now finds the model, never neither.
            self._insert(target_model, entry)
            self._loading.pop(target_model, None)
            self._loads += 1
        return entry

    def _load_entry(self, target_model: str) -> _Entry:
        path = self._disk_path(target_model)
        data: bytes | None = None
        with self._lock:
            on_disk = target_model in self._disk
            if on_disk:
                self._disk.move_to_end(target_model)
        load_started = self._clock()
        if on_disk:
            try:
                data = path.read_bytes()
            except OSError:
                data = None
        if data is None:
            data = self._download(target_model, path)
            load_started = self._clock()
        if self.options.load_delay_seconds:
            time.sleep(self.options.load_delay_seconds)
        try:
            model = load_model(data)
        except Exception as err:
            self._drop_from_disk(target_model, path)
            log.warning("target model %s failed to load: %s", target_model, err)
            raise _LoadFailed(
                self._model_error(1, 500, f"Failed to load model {target_model}: {err}")
            ) from None
        nbytes = estimate_model_bytes(model) + self._overhead_bytes
        loading = (self._clock() - load_started) * 1e6
        with self._lock:
            self._window.loading.add(loading)
        log.debug("loaded %s (%d bytes) in %.0f us", target_model, nbytes, loading)
        return _Entry(model, nbytes)

    def _download(self, target_model: str, path: Path) -> bytes:
        started = self._clock()
        try:
            data = self._fetch(target_model)
        except ModelArtifactMissing as err:
            where = f" from {err.location}" if err.location else ""
            raise _LoadFailed(
                InvokeResult.validation_error(
                    f"Failed to download model data for target model {target_model}{where}. "
                    "Please ensure that there is an object located at the URL and that the "
                    "role passed to CreateModel has permissions to download the model."
                )
            ) from None
        except Exception as err:
            raise _LoadFailed(
                InvokeResult.validation_error(
                    f"Failed to download model data for target model {target_model}: {err}"
                )
            ) from None
        downloading = (self._clock() - started) * 1e6
        partial = path.with_name(path.name + ".part")  # one loader per model at a time
        partial.write_bytes(data)
        partial.replace(path)
        with self._lock:
            self._downloads += 1
            self._window.downloading.add(downloading)
            previous = self._disk.pop(target_model, 0)
            self._disk[target_model] = len(data)
            self._disk_bytes += len(data) - previous
            victims = self._disk_victims(target_model)
        for victim in victims:
            self._remove_disk_file(victim)
        return data

    def _disk_victims(self, keep: str) -> list[str]:
        """Pick artifacts to delete while the disk tier is over capacity (under _lock)."""
        victims: list[str] = []
        if self._disk_bytes <= self._disk_capacity_bytes:
            return victims
        for name in list(self._disk):
            if self._disk_bytes <= self._disk_capacity_bytes:
                break
            if name == keep or name in self._models or name in self._loading:
                continue
            self._disk_bytes -= self._disk.pop(name)
            victims.append(name)
        return victims

    def _drop_from_disk(self, target_model: str, path: Path) -> None:
        with self._lock:
            self._disk_bytes -= self._disk.pop(target_model, 0)
        path.unlink(missing_ok=True)

    def _disk_path(self, target_model: str) -> Path:
        # A digest, not the name: a TargetModel may hold '/', be 1,024 characters long,
        # or spell a path; the file name must be none of those.
        return self._models_dir / f"{hashlib.sha256(target_model.encode()).hexdigest()}.tar.gz"

    def _remove_disk_file(self, target_model: str) -> None:
        self._disk_path(target_model).unlink(missing_ok=True)

    def _insert(self, target_model: str, entry: _Entry) -> None:
        """Evict least recently used models until ``entry`` fits, then add it (under _lock)."""
        models = self._models
        while models and self._over_bounds(entry.nbytes):
            started = self._clock()
            victim, evicted = models.popitem(last=False)
            self._memory_bytes -= evicted.nbytes
            self._evictions += 1
            # Unloading a local model is dropping the reference; the time is measured anyway
            # so that the metric exists and is honest.
            self._window.unloading.add((self._clock() - started) * 1e6)
            log.debug("evicted %s (%d bytes)", victim, evicted.nbytes)
        models[target_model] = entry
        self._memory_bytes += entry.nbytes

    def _over_bounds(self, incoming: int) -> bool:
        if self.options.max_models is not None and len(self._models) >= self.options.max_models:
            return True
        after = self._memory_bytes + incoming
        if self._max_memory_bytes is not None and after > self._max_memory_bytes:
            return True
        utilization = (self._baseline_bytes + after) / self._instance_bytes * 100
        return utilization > self.options.high_water_mark

    # -- metrics and stats ------------------------------------------------------------

    def is_loaded(self, target_model: str) -> bool:
        """Whether ``target_model`` is in memory now (a call would not wait on a load).

        The AWS endpoint answers such calls on its event loop, without a thread hop.
        """
        return target_model in self._models

    def drain_metrics(self) -> list[dict[str, Any]]:
        """Return the metrics since the last drain, ready for CloudWatch ``PutMetricData``.

        Returns
        -------
        list of dict
            One ``{"Namespace": ..., "MetricData": [...]}`` per namespace that has data:
            pass each to ``cloudwatch.put_metric_data(**batch)``. ``AWS/SageMaker`` holds
            statistic sets (``StatisticValues``) of the invocation and model-loading
            metrics that had samples; ``/aws/sagemaker/Endpoints`` the gauges sampled now.
            All are timestamped now and carry the ``EndpointName`` and ``VariantName``
            dimensions.
        """
        with self._lock:
            window, self._window = self._window, _Window()
            loaded = len(self._models)
            memory = self._memory_utilization()
            disk = self._disk_utilization()
        timestamp = datetime.fromtimestamp(self.options.wall_clock(), UTC)
        dimensions = [
            {"Name": "EndpointName", "Value": self.name},
            {"Name": "VariantName", "Value": self.variant_name},
        ]
        invocation_data = [
            {
                "MetricName": name,
                "Dimensions": dimensions,
                "Timestamp": timestamp,
                "StatisticValues": values,
                "Unit": unit,
            }
            for name, unit, values in window.statistic_sets()
        ]
        instance_data = [
            {
                "MetricName": name,
                "Dimensions": dimensions,
                "Timestamp": timestamp,
                "Value": value,
                "Unit": unit,
            }
            for name, value, unit in (
                ("LoadedModelCount", float(loaded), "None"),
                ("MemoryUtilization", memory, "Percent"),
                ("DiskUtilization", disk, "Percent"),
            )
        ]
        batches = [{"Namespace": ENDPOINTS_NAMESPACE, "MetricData": instance_data}]
        if invocation_data:
            batches.insert(0, {"Namespace": SAGEMAKER_NAMESPACE, "MetricData": invocation_data})
        return batches

    def stats(self) -> EndpointStats:
        """Return the counters and the tiers' contents now."""
        with self._lock:
            return EndpointStats(
                loaded_models=tuple(self._models),
                disk_models=tuple(self._disk),
                loads=self._loads,
                downloads=self._downloads,
                evictions=self._evictions,
                hits=self._hits,
                misses=self._misses,
                not_ready=self._not_ready,
                load_failures=self._load_failures,
                memory_bytes=self._memory_bytes,
                disk_bytes=self._disk_bytes,
                memory_utilization=self._memory_utilization(),
                disk_utilization=self._disk_utilization(),
            )

    def _memory_utilization(self) -> float:
        return (self._baseline_bytes + self._memory_bytes) / self._instance_bytes * 100

    def _disk_utilization(self) -> float:
        return self._disk_bytes / self._disk_capacity_bytes * 100

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        """Stop the loader threads (a load in progress finishes first)."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> MultiModelEndpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _target_model_problem(target_model: str) -> str | None:
    """Return why ``target_model`` is not acceptable, or ``None``."""
    if not target_model:
        return (
            "1 validation error detected: Value at 'targetModel' failed to satisfy "
            "constraint: Member must have length greater than or equal to 1 "
            "(a multi-model endpoint needs the X-Amzn-SageMaker-Target-Model header)"
        )
    if len(target_model) > MAX_TARGET_MODEL_LENGTH:
        return (
            "1 validation error detected: Value at 'targetModel' failed to satisfy "
            f"constraint: Member must have length less than or equal to {MAX_TARGET_MODEL_LENGTH}"
        )
    if target_model[0].isspace() or not target_model.isprintable():
        return (
            f"1 validation error detected: Value {target_model[:100]!r} at 'targetModel' "
            "failed to satisfy constraint: Member must satisfy regular expression pattern: "
            "\\A\\S[\\p{Print}]*\\z"
        )
    if ".." in target_model or target_model.startswith("/"):
        return (
            f"TargetModel {target_model[:100]!r} is not valid: it must be a path relative "
            "to the model data prefix, without '..'"
        )
    return None


def _load_preprocessor(source: str | os.PathLike[str] | bytes, work_dir: Path) -> _Preprocessor:
    """Load the preprocessor model as the scikit-learn container does."""
    if isinstance(source, bytes) or Path(source).is_file():
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        if work_dir.exists():
            shutil.rmtree(work_dir)
        work_dir.mkdir(parents=True)
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                extract_safely(tar, work_dir)
        except (tarfile.TarError, OSError, EOFError) as err:
            raise ValueError(f"the preprocessor artifact is not a readable tar.gz: {err}") from None
        model_dir = work_dir
    else:
        model_dir = Path(source)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"preprocessor {model_dir} is neither a file nor a directory")
    entry_point = model_dir / "code" / "inference.py"
    module = _import_entry_point(entry_point) if entry_point.is_file() else None
    if module is None:
        module = load_container_module("inference")
    model = module.model_fn(str(model_dir))
    return _Preprocessor(module=module, model=model, model_dir=model_dir)


def _import_entry_point(path: Path) -> ModuleType:
    """Import the artifact's ``code/inference.py`` (its ``SAGEMAKER_PROGRAM``)."""
    # The entry point puts its own directory first on sys.path to import the shipped
    # ``citymodels``. In this process that package is already imported (the layer), so
    # it is reused, and sys.path is restored after the import: the extracted copy must
    # not shadow anything else for the rest of the process.
    importlib.import_module("citymodels")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    spec = importlib.util.spec_from_file_location(f"citymodels_mme_inference_{digest}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    saved_path = list(sys.path)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved_path
    for name in ("model_fn", "input_fn", "predict_fn", "output_fn"):
        if not callable(getattr(module, name, None)):
            raise ImportError(f"{path} does not define {name}()")
    return module
