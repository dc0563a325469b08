"""The local MME's CloudWatch metrics, under their AWS names, units and dimensions.

The endpoint (:mod:`.models`) adds every invocation and every load to the current
:class:`MetricsWindow` (plain counters and :class:`Stat` sums: the hot path only adds);
``drain_metrics`` swaps in a new window and sends the old one, with the gauges sampled
then, as ``PutMetricData`` batches (:meth:`MetricsWindow.batches`).
:class:`EndpointStats` are the endpoint's counters since it started (tests, benchmarks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

__all__ = [
    "ENDPOINTS_NAMESPACE",
    "SAGEMAKER_NAMESPACE",
    "EndpointStats",
    "MetricsWindow",
    "Stat",
]

SAGEMAKER_NAMESPACE: Final = "AWS/SageMaker"
"""Namespace of the invocation and model-loading metrics."""
ENDPOINTS_NAMESPACE: Final = "/aws/sagemaker/Endpoints"
"""Namespace of the instance metrics (LoadedModelCount, Memory/DiskUtilization)."""


class Stat:
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


class MetricsWindow:
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
        self.latency = Stat()
        self.waiting = Stat()
        self.downloading = Stat()
        self.loading = Stat()
        self.unloading = Stat()

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

    def batches(
        self,
        *,
        endpoint_name: str,
        variant_name: str,
        timestamp: datetime,
        loaded_models: int,
        memory_utilization: float,
        disk_utilization: float,
    ) -> list[dict[str, Any]]:
        """This window's metrics and the gauges sampled now, as ``PutMetricData`` batches.

        One ``{"Namespace": ..., "MetricData": [...]}`` per namespace that has data:
        ``AWS/SageMaker`` the statistic sets of the metrics that had samples,
        ``/aws/sagemaker/Endpoints`` the gauges; all at ``timestamp``, with the
        ``EndpointName`` and ``VariantName`` dimensions.
        """
        dimensions = [
            {"Name": "EndpointName", "Value": endpoint_name},
            {"Name": "VariantName", "Value": variant_name},
        ]
        invocation_data = [
            {
                "MetricName": name,
                "Dimensions": dimensions,
                "Timestamp": timestamp,
                "StatisticValues": values,
                "Unit": unit,
            }
            for name, unit, values in self.statistic_sets()
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
                ("LoadedModelCount", float(loaded_models), "None"),
                ("MemoryUtilization", memory_utilization, "Percent"),
                ("DiskUtilization", disk_utilization, "Percent"),
            )
        ]
        batches = [{"Namespace": ENDPOINTS_NAMESPACE, "MetricData": instance_data}]
        if invocation_data:
            batches.insert(0, {"Namespace": SAGEMAKER_NAMESPACE, "MetricData": invocation_data})
        return batches


def _ones(samples: int, ones: int) -> dict[str, float]:
    """The statistic set of ``samples`` values that are 1 ``ones`` times and 0 otherwise."""
    return {
        "SampleCount": float(samples),
        "Sum": float(ones),
        "Minimum": 1.0 if samples and ones == samples else 0.0,
        "Maximum": 1.0 if ones else 0.0,
    }


@dataclass(frozen=True)
class EndpointStats:
    """Counters and tiers of a :class:`~.models.MultiModelEndpoint` since it started.

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
