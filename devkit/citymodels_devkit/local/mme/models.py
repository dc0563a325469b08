"""The local MME's endpoint: its tiers, its loads, the pipeline run, its counters.

:class:`MultiModelEndpoint` answers InvokeEndpoint for a target model: from memory
when the model is loaded (the hot path), else after loading it (single flight, on a
loader thread, from the disk tier or a download), within the bounds of its
:class:`EndpointOptions`. The package's docstring says what it promises; what a client
gets is built in :mod:`.responses`, the metrics in :mod:`.metrics`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

from citymodels_devkit.linear_learner import InferenceError, LinearLearnerModel, load_model
from citymodels_devkit.local.mme import responses
from citymodels_devkit.local.mme.metrics import EndpointStats, MetricsWindow
from citymodels_devkit.local.mme.preprocessor import load_preprocessor
from citymodels_devkit.local.mme.responses import (
    BODY_TOO_LARGE,
    JSON,
    MAX_BODY_BYTES,
    InvokeResult,
    target_model_problem,
)

if TYPE_CHECKING:
    from citymodels_devkit.local.stack import LocalOptions

__all__ = [
    "EndpointOptions",
    "ModelArtifactMissing",
    "MultiModelEndpoint",
    "estimate_model_bytes",
]

log = logging.getLogger("citymodels.local.mme")

_MB: Final = 1024 * 1024
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
        self._pre = load_preprocessor(preprocessor, cache_dir / "preprocessor")
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
        self._window = MetricsWindow()
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
        self, target_model: str, body: bytes, content_type: str, accept: str = JSON
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
            return self._rejected(BODY_TOO_LARGE)
        entry = self._models.get(target_model)
        if entry is None:
            return self._invoke_cold(target_model, body, content_type, accept, started)
        return self._serve(target_model, entry, body, content_type, accept, started, hit=True)

    def _invoke_cold(
        self, target_model: str, body: bytes, content_type: str, accept: str, started: float
    ) -> InvokeResult:
        problem = target_model_problem(target_model)
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
            if target_model in self._models:  # else evicted meanwhile; this request had it
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
            answer, answer_type = model.invoke(features, features_type, accept or JSON)
        except InferenceError as err:
            return self._model_error(1, 400, str(err))
        except Exception as err:
            return self._model_error(1, 500, f"{type(err).__name__}: {err}")
        return InvokeResult(200, answer, answer_type, self._ok_headers)

    @staticmethod
    def _count_error(window: MetricsWindow, original_status_code: int) -> None:
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
        return responses.model_not_ready(target_model, self.options.load_wait_seconds)

    def _model_error(self, container: int, original_status: int, message: str) -> InvokeResult:
        options = self.options
        return responses.model_error(
            options.container_hostnames[container],
            original_status,
            message,
            region=options.region,
            account_id=options.account_id,
            log_group=self._log_group,
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
            raise _LoadFailed(responses.load_failed(target_model, err)) from err
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
            raise _LoadFailed(responses.artifact_missing(target_model, err.location)) from None
        except Exception as err:
            raise _LoadFailed(responses.download_failed(target_model, err)) from None
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
            window, self._window = self._window, MetricsWindow()
            loaded = len(self._models)
            memory = self._memory_utilization()
            disk = self._disk_utilization()
        return window.batches(
            endpoint_name=self.name,
            variant_name=self.variant_name,
            timestamp=datetime.fromtimestamp(self.options.wall_clock(), UTC),
            loaded_models=loaded,
            memory_utilization=memory,
            disk_utilization=disk,
        )

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
