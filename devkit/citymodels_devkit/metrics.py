"""Reading a multi-model endpoint's CloudWatch metrics back (the notebook's section 8).

SageMaker publishes a multi-model endpoint's metrics in two namespaces, both with the
dimensions ``EndpointName`` and ``VariantName``:

- ``AWS/SageMaker``: per invocation, ``Invocations``, ``ModelCacheHit`` (1 when the
  model was loaded, 0 when it had to be loaded: its Average is the hit ratio),
  ``ModelLatency`` and, when models move, ``ModelLoadingWaitTime``,
  ``ModelDownloadingTime``, ``ModelLoadingTime``, ``ModelUnloadingTime``
  (microseconds);
- ``/aws/sagemaker/Endpoints``: per instance, ``LoadedModelCount``,
  ``MemoryUtilization`` and ``DiskUtilization`` (percent).

The local stack publishes the same metrics under the same names, units and dimensions
every second (AWS: every minute), so this module works unchanged against both: only the
CloudWatch client and the period differ (:func:`default_period`).

Series are read with ``GetMetricData`` (every metric and statistic in one request),
over a range aligned to the period, so each datapoint is one clock-aligned period as
CloudWatch defines it; a window's totals (:func:`window_statistics`) with
``GetMetricStatistics``. Long ranges are read in pieces of :data:`CHUNK_PERIODS`
periods: CloudWatch would take far more per request, but moto (the local stack's
CloudWatch) scans every datapoint of a request's range once per period.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

__all__ = [
    "CHUNK_PERIODS",
    "ENDPOINTS_NAMESPACE",
    "MME_METRICS",
    "SAGEMAKER_NAMESPACE",
    "Datapoint",
    "EndpointMetrics",
    "MetricQuery",
    "MetricSeries",
    "WindowStatistics",
    "default_period",
    "read_endpoint_metrics",
    "window_statistics",
]

SAGEMAKER_NAMESPACE: Final = "AWS/SageMaker"
"""Namespace of the invocation and model-loading metrics."""
ENDPOINTS_NAMESPACE: Final = "/aws/sagemaker/Endpoints"
"""Namespace of the instance metrics (LoadedModelCount, Memory/DiskUtilization)."""
DEFAULT_VARIANT: Final = "AllTraffic"
"""The production variant the template (and SageMaker's default) names."""
CHUNK_PERIODS: Final = 60
"""Periods read per GetMetricData request."""
LOCAL_PERIOD: Final = 1
"""Seconds: the local stack publishes the endpoint's metrics every second."""
AWS_PERIOD: Final = 60
"""Seconds: SageMaker publishes endpoint metrics every minute."""


@dataclass(frozen=True)
class MetricQuery:
    """One metric to read and the statistics wanted of it.

    Attributes
    ----------
    namespace, name
        The metric.
    statistics
        CloudWatch statistics (``Average``, ``Sum``, ``SampleCount``, ``Minimum``,
        ``Maximum``).
    unit
        Its CloudWatch unit, for labels (``Percent``, ``Microseconds``, ``None``).
    """

    namespace: str
    name: str
    statistics: tuple[str, ...]
    unit: str = "None"


MME_METRICS: Final[tuple[MetricQuery, ...]] = (
    MetricQuery(ENDPOINTS_NAMESPACE, "LoadedModelCount", ("Maximum", "Average")),
    MetricQuery(ENDPOINTS_NAMESPACE, "MemoryUtilization", ("Maximum", "Average"), "Percent"),
    MetricQuery(ENDPOINTS_NAMESPACE, "DiskUtilization", ("Maximum",), "Percent"),
    MetricQuery(SAGEMAKER_NAMESPACE, "Invocations", ("Sum",)),
    MetricQuery(SAGEMAKER_NAMESPACE, "ModelCacheHit", ("Average", "Sum", "SampleCount")),
    MetricQuery(SAGEMAKER_NAMESPACE, "ModelLatency", ("Average", "Maximum"), "Microseconds"),
    MetricQuery(
        SAGEMAKER_NAMESPACE, "ModelLoadingWaitTime", ("Average", "SampleCount"), "Microseconds"
    ),
    MetricQuery(
        SAGEMAKER_NAMESPACE, "ModelDownloadingTime", ("Average", "SampleCount"), "Microseconds"
    ),
    MetricQuery(
        SAGEMAKER_NAMESPACE,
        "ModelLoadingTime",
        ("Average", "Maximum", "SampleCount"),
        "Microseconds",
    ),
    MetricQuery(SAGEMAKER_NAMESPACE, "ModelUnloadingTime", ("SampleCount",), "Microseconds"),
)
"""What ``citymodels metrics`` and the demo read: every MME metric (docs/design.md §4)."""


def default_period(*, local: bool) -> int:
    """Return the period that matches how often the endpoint publishes (1 s locally, 60 s on AWS)."""
    return LOCAL_PERIOD if local else AWS_PERIOD


@dataclass(frozen=True)
class Datapoint:
    """One period's statistics of a metric.

    Attributes
    ----------
    timestamp
        The period's start (timezone-aware, UTC).
    values
        Statistic name to value (only those asked for and present).
    """

    timestamp: datetime
    values: Mapping[str, float]


@dataclass(frozen=True)
class MetricSeries:
    """A metric's datapoints over a time range, oldest first."""

    namespace: str
    name: str
    unit: str
    points: tuple[Datapoint, ...] = ()

    def __len__(self) -> int:
        return len(self.points)

    @property
    def timestamps(self) -> list[datetime]:
        """The datapoints' timestamps."""
        return [p.timestamp for p in self.points]

    def values(self, statistic: str) -> list[float]:
        """The values of one statistic (``nan`` where a datapoint lacks it)."""
        return [float(p.values.get(statistic, math.nan)) for p in self.points]

    def maximum(self, statistic: str = "Maximum") -> float | None:
        """The largest value of ``statistic`` over the series, or None when empty."""
        values = [v for v in self.values(statistic) if not math.isnan(v)]
        return max(values) if values else None

    def total(self, statistic: str) -> float:
        """The sum of ``statistic`` over the series (for ``Sum`` and ``SampleCount``)."""
        return float(sum(v for v in self.values(statistic) if not math.isnan(v)))

    def to_dict(self) -> dict[str, Any]:
        """Return the series as JSON-ready data: timestamps and one list per statistic."""
        statistics = sorted({name for p in self.points for name in p.values})
        return {
            "namespace": self.namespace,
            "unit": self.unit,
            "timestamps": [_iso(t) for t in self.timestamps],
            **{name: self.values(name) for name in statistics},
        }


@dataclass(frozen=True)
class EndpointMetrics:
    """An endpoint's metrics over ``[start, end)`` at one period.

    Attributes
    ----------
    endpoint_name, variant_name
        The dimensions read.
    start, end
        The range asked for (UTC).
    period
        Seconds per datapoint.
    series
        Metric name to its series (every metric asked for, empty when it had no data).
    """

    endpoint_name: str
    variant_name: str
    start: datetime
    end: datetime
    period: int
    series: Mapping[str, MetricSeries] = field(default_factory=dict)

    def __getitem__(self, name: str) -> MetricSeries:
        return self.series.get(name) or MetricSeries("", name, "None")

    @property
    def empty(self) -> bool:
        """Whether no metric had a datapoint in the range."""
        return not any(len(s) for s in self.series.values())

    def cache_hit_ratio(self) -> float | None:
        """``ModelCacheHit`` over the whole range: hits / invocations needing a model."""
        hits = self["ModelCacheHit"]
        samples = hits.total("SampleCount")
        return hits.total("Sum") / samples if samples else None

    def to_dict(self) -> dict[str, Any]:
        """Return everything as JSON-ready data."""
        return {
            "endpoint_name": self.endpoint_name,
            "variant_name": self.variant_name,
            "start": _iso(self.start),
            "end": _iso(self.end),
            "period": self.period,
            "cache_hit_ratio": self.cache_hit_ratio(),
            "series": {name: s.to_dict() for name, s in self.series.items()},
        }


def _dimensions(endpoint_name: str, variant_name: str) -> list[dict[str, str]]:
    return [
        {"Name": "EndpointName", "Value": endpoint_name},
        {"Name": "VariantName", "Value": variant_name},
    ]


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return _utc(moment).isoformat().replace("+00:00", "Z")


def _aligned(moment: datetime, period: int, *, up: bool = False) -> datetime:
    """``moment`` rounded down (or up) to a multiple of ``period`` seconds since the epoch."""
    seconds = moment.timestamp()
    rounded = (math.ceil if up else math.floor)(seconds / period) * period
    return datetime.fromtimestamp(rounded, UTC)


def variants_with_metrics(cloudwatch: Any, endpoint_name: str) -> set[str]:
    """Return the variants of ``endpoint_name`` CloudWatch has any ``AWS/SageMaker``
    metric for (``ListMetrics``; AWS lists metrics with data in the last two weeks)."""
    paginator = cloudwatch.get_paginator("list_metrics")
    variants: set[str] = set()
    pages = paginator.paginate(
        Namespace="AWS/SageMaker", Dimensions=[{"Name": "EndpointName", "Value": endpoint_name}]
    )
    for page in pages:
        for metric in page.get("Metrics", []):
            for dimension in metric.get("Dimensions", []):
                if dimension.get("Name") == "VariantName":
                    variants.add(str(dimension.get("Value")))
    return variants


def _chunks(start: datetime, end: datetime, period: int) -> Iterable[tuple[datetime, datetime]]:
    """Split ``[start, end)`` into pieces of at most CHUNK_PERIODS periods."""
    step = timedelta(seconds=period * CHUNK_PERIODS)
    while start < end:
        yield start, min(end, start + step)
        start += step


def read_endpoint_metrics(
    cloudwatch: Any,
    endpoint_name: str,
    *,
    start: datetime,
    end: datetime,
    period: int,
    variant_name: str = DEFAULT_VARIANT,
    metrics: Sequence[MetricQuery] = MME_METRICS,
) -> EndpointMetrics:
    """Read an endpoint's metrics from CloudWatch (``GetMetricData``).

    Parameters
    ----------
    cloudwatch
        A boto3 CloudWatch client (AWS's, or the local stack's).
    endpoint_name, variant_name
        The ``EndpointName`` and ``VariantName`` dimensions.
    start, end
        The time range (naive datetimes are taken as UTC); widened to whole periods.
    period
        Seconds per datapoint: 1 for the local stack, 60 (or a multiple) on AWS, where
        periods under a minute exist only for high-resolution metrics.
    metrics
        What to read (default: every MME metric).

    Returns
    -------
    EndpointMetrics
        One series per metric, oldest datapoint first; a datapoint's timestamp is the
        start of its period.

    Raises
    ------
    ValueError
        ``period`` is not positive or ``end`` is not after ``start``.
    botocore.exceptions.ClientError
        CloudWatch refused the request (e.g. access denied).
    """
    if period < 1:
        raise ValueError(f"period must be a positive number of seconds, got {period}")
    start, end = _utc(start), _utc(end)
    if end <= start:
        raise ValueError("the time range is empty: end must be after start")
    start, end = _aligned(start, period), _aligned(end, period, up=True)
    dimensions = _dimensions(endpoint_name, variant_name)
    queries = [
        (f"m{i}_{statistic.lower()}", query, statistic)
        for i, query in enumerate(metrics)
        for statistic in query.statistics
    ]
    requests = [
        {
            "Id": query_id,
            "MetricStat": {
                "Metric": {
                    "Namespace": query.namespace,
                    "MetricName": query.name,
                    "Dimensions": dimensions,
                },
                "Period": period,
                "Stat": statistic,
            },
            "ReturnData": True,
        }
        for query_id, query, statistic in queries
    ]
    by_id = {query_id: (query, statistic) for query_id, query, statistic in queries}
    collected: dict[str, dict[datetime, dict[str, float]]] = {q.name: {} for q in metrics}
    for chunk_start, chunk_end in _chunks(start, end, period):
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "MetricDataQueries": requests,
                "StartTime": chunk_start,
                "EndTime": chunk_end,
                "ScanBy": "TimestampAscending",
            }
            if token:
                kwargs["NextToken"] = token
            answer = cloudwatch.get_metric_data(**kwargs)
            for result in answer.get("MetricDataResults", []):
                query, statistic = by_id[result["Id"]]
                points = collected[query.name]
                for stamp, value in zip(result["Timestamps"], result["Values"], strict=True):
                    points.setdefault(_utc(stamp), {})[statistic] = float(value)
            token = answer.get("NextToken")
            if not token:
                break
    series = {
        query.name: MetricSeries(
            query.namespace,
            query.name,
            query.unit,
            tuple(
                Datapoint(stamp, values)
                for stamp, values in sorted(collected[query.name].items())
                if stamp < end
            ),
        )
        for query in metrics
    }
    return EndpointMetrics(endpoint_name, variant_name, start, end, period, series)


@dataclass(frozen=True)
class WindowStatistics:
    """A metric's statistics aggregated over one time window."""

    name: str
    start: datetime
    end: datetime
    values: Mapping[str, float]

    def ratio(self) -> float | None:
        """``Sum / SampleCount`` (the hit ratio of ``ModelCacheHit``), None without samples."""
        samples = self.values.get("SampleCount", 0.0)
        return self.values.get("Sum", 0.0) / samples if samples else None


def window_statistics(
    cloudwatch: Any,
    endpoint_name: str,
    query: MetricQuery,
    *,
    start: datetime,
    end: datetime,
    variant_name: str = DEFAULT_VARIANT,
) -> WindowStatistics:
    """Aggregate one metric over ``[start, end)``: Sum, SampleCount, Minimum, Maximum.

    The window is read with a period covering all of it (rounded up to a minute), and
    the datapoints CloudWatch returns are combined. CloudWatch aligns periods to the
    clock, so on AWS the window is only as sharp as the metric's resolution; locally,
    where every datapoint is one second of the endpoint's life, a window whose ends are
    whole seconds holds exactly the invocations published in it.
    """
    start, end = _utc(start), _utc(end)
    span = max(1.0, (end - start).total_seconds())
    period = math.ceil(span / 60.0) * 60
    answer = cloudwatch.get_metric_statistics(
        Namespace=query.namespace,
        MetricName=query.name,
        Dimensions=_dimensions(endpoint_name, variant_name),
        StartTime=start,
        EndTime=end,
        Period=period,
        Statistics=["Sum", "SampleCount", "Minimum", "Maximum"],
    )
    points = answer.get("Datapoints", [])
    values: dict[str, float] = {}
    if points:
        values = {
            "Sum": float(sum(p.get("Sum", 0.0) for p in points)),
            "SampleCount": float(sum(p.get("SampleCount", 0.0) for p in points)),
            "Minimum": float(min(p.get("Minimum", math.inf) for p in points)),
            "Maximum": float(max(p.get("Maximum", -math.inf) for p in points)),
        }
    return WindowStatistics(query.name, start, end, values)
