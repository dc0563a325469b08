"""PNG charts of a multi-model endpoint's metrics (the notebook's section 8 charts).

The notebook shows two CloudWatch charts of its cache experiment: LoadedModelCount with
MemoryUtilization (``ModelCountMemUtilization.png``) and the same with ModelCacheHit
(``ModelCountMemUtilizationCacheHit.png``). :func:`write_charts` draws both from
:class:`~citymodels_devkit.metrics.EndpointMetrics`, whatever the period (1 s locally,
60 s on AWS), optionally with the experiment's phases shaded.

Figures are built with matplotlib's object API on the Agg canvas: no pyplot state, no
display needed, safe in any thread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from citymodels_devkit.metrics import EndpointMetrics

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "CACHE_HIT_CHART",
    "MODELS_MEMORY_CHART",
    "Phase",
    "plot_models_and_memory",
    "plot_models_memory_and_cache_hit",
    "write_charts",
]

MODELS_MEMORY_CHART = "ModelCountMemUtilization.png"
"""The notebook's first chart: LoadedModelCount and MemoryUtilization."""
CACHE_HIT_CHART = "ModelCountMemUtilizationCacheHit.png"
"""The notebook's second chart: the same with ModelCacheHit."""

_MODELS_COLOR = "tab:blue"
_MEMORY_COLOR = "tab:orange"
_HIT_COLOR = "tab:green"
_PHASE_COLORS = ("#e8eef7", "#f7efe3", "#e9f5e9", "#f3e8f5")
_DPI = 110


@dataclass(frozen=True)
class Phase:
    """A stretch of time to shade and label on the charts.

    Attributes
    ----------
    label
        Shown at the top of the band (keep it short).
    start, end
        The stretch (timezone-aware).
    note
        A second line under the label on the cache-hit panel (e.g. ``hit ratio 1.00``).
    """

    label: str
    start: datetime
    end: datetime
    note: str = ""


@dataclass(frozen=True)
class _TimeAxis:
    """Elapsed time since the range's start, in seconds or minutes."""

    origin: datetime
    scale: float
    label: str

    @classmethod
    def for_metrics(cls, metrics: EndpointMetrics) -> _TimeAxis:
        span = (metrics.end - metrics.start).total_seconds()
        since = metrics.start.strftime("%Y-%m-%d %H:%M:%S UTC")
        if span <= 15 * 60:
            return cls(metrics.start, 1.0, f"time (s since {since})")
        return cls(metrics.start, 60.0, f"time (min since {since})")

    def x(self, moment: datetime) -> float:
        return (moment - self.origin).total_seconds() / self.scale

    def xs(self, moments: Sequence[datetime]) -> list[float]:
        return [self.x(m) for m in moments]


def _figure(rows: int, height: float) -> tuple[Any, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    return figure, list(axes)


def _shade(ax: Axes, axis: _TimeAxis, phases: Sequence[Phase], *, notes: bool) -> None:
    """Shade each phase and write its label (and note) at the top of the band."""
    for i, phase in enumerate(phases):
        left, right = axis.x(phase.start), axis.x(phase.end)
        ax.axvspan(left, right, color=_PHASE_COLORS[i % len(_PHASE_COLORS)], zorder=0, lw=0)
        text = phase.label + (f"\n{phase.note}" if notes and phase.note else "")
        ax.text(
            (left + right) / 2,
            0.98,
            text,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="top",
            fontsize=8,
            color="#333333",
        )


def _with_gaps(
    xs: Sequence[float], ys: Sequence[float], step: float
) -> tuple[list[float], list[float]]:
    """Insert a NaN where consecutive datapoints are more than two periods apart.

    CloudWatch has no datapoint for a period without samples; a line drawn straight
    across a long gap would show values that were never measured. One missing period is
    bridged: a publisher's clock jitter leaves one now and then.
    """
    out_x: list[float] = []
    out_y: list[float] = []
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if i and x - xs[i - 1] > step * 2.5:
            out_x.append((x + xs[i - 1]) / 2)
            out_y.append(math.nan)
        out_x.append(x)
        out_y.append(y)
    return out_x, out_y


def _draw_models_and_memory(
    ax: Axes,
    metrics: EndpointMetrics,
    axis: _TimeAxis,
    phases: Sequence[Phase],
    model_capacity: int | None,
) -> list[Any]:
    """Draw the top panel; return its legend handles."""
    models = metrics["LoadedModelCount"]
    memory = metrics["MemoryUtilization"]
    step = metrics.period / axis.scale
    _shade(ax, axis, phases, notes=False)
    (line_models,) = ax.plot(
        *_with_gaps(axis.xs(models.timestamps), models.values("Maximum"), step),
        color=_MODELS_COLOR,
        lw=2.0,
        drawstyle="steps-post",
        label="LoadedModelCount (Maximum, count)",
    )
    handles = [line_models]
    ax.set_ylabel("loaded models (count)", color=_MODELS_COLOR)
    ax.tick_params(axis="y", labelcolor=_MODELS_COLOR)
    peak = models.maximum()
    ax.set_ylim(0, max(1.0, (peak or 0) * 1.3, (model_capacity or 0) * 1.3))
    if model_capacity is not None:
        handles.append(
            ax.axhline(
                model_capacity,
                color=_MODELS_COLOR,
                lw=0.8,
                ls=":",
                label=f"models that fit in memory ({model_capacity:,})",
            )
        )
    twin = ax.twinx()
    (line_memory,) = twin.plot(
        *_with_gaps(axis.xs(memory.timestamps), memory.values("Maximum"), step),
        color=_MEMORY_COLOR,
        lw=1.4,
        ls="--",
        drawstyle="steps-post",
        label="MemoryUtilization (Maximum, %)",
    )
    handles.insert(1, line_memory)
    twin.set_ylabel("memory utilization (%)", color=_MEMORY_COLOR)
    twin.tick_params(axis="y", labelcolor=_MEMORY_COLOR)
    twin.set_ylim(0, 100)
    # The peaks are labelled at the end of the range, memory above its line and models
    # under theirs: the two lines run close together (memory grows with the models).
    right = axis.x(metrics.end)
    if peak is not None:
        ax.annotate(
            f"max {peak:,.0f} models",
            xy=(right, peak),
            xytext=(-6, -12),
            textcoords="offset points",
            ha="right",
            va="center",
            fontsize=8,
            color=_MODELS_COLOR,
        )
    top_memory = memory.maximum()
    if top_memory is not None:
        twin.annotate(
            f"max {top_memory:.1f} %",
            xy=(right, top_memory),
            xytext=(-6, 9),
            textcoords="offset points",
            ha="right",
            va="center",
            fontsize=8,
            color=_MEMORY_COLOR,
        )
    ax.grid(axis="y", alpha=0.3)
    return handles


def _title(metrics: EndpointMetrics, what: str) -> str:
    return (
        f"{what}\nendpoint {metrics.endpoint_name} / {metrics.variant_name}, "
        f"period {metrics.period} s"
    )


def plot_models_and_memory(
    metrics: EndpointMetrics,
    path: Path,
    *,
    phases: Sequence[Phase] = (),
    model_capacity: int | None = None,
) -> Path:
    """Draw LoadedModelCount and MemoryUtilization over time into a PNG at ``path``.

    ``model_capacity``, when known, is drawn as a line: how many models fit in memory.
    """
    axis = _TimeAxis.for_metrics(metrics)
    figure, (ax,) = _figure(1, 5.0)
    handles = _draw_models_and_memory(ax, metrics, axis, phases, model_capacity)
    ax.set_xlabel(axis.label)
    ax.set_xlim(0, axis.x(metrics.end))
    ax.set_title(_title(metrics, "Models loaded in memory and the instance's memory"), fontsize=11)
    figure.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    return _save(figure, path)


def plot_models_memory_and_cache_hit(
    metrics: EndpointMetrics,
    path: Path,
    *,
    phases: Sequence[Phase] = (),
    model_capacity: int | None = None,
) -> Path:
    """Draw LoadedModelCount and MemoryUtilization, and ModelCacheHit under them."""
    axis = _TimeAxis.for_metrics(metrics)
    figure, (top, bottom) = _figure(2, 7.6)
    handles = _draw_models_and_memory(top, metrics, axis, phases, model_capacity)
    top.set_title(
        _title(metrics, "Models loaded, memory, and the model cache hit ratio"), fontsize=11
    )
    hits = metrics["ModelCacheHit"]
    xs = axis.xs(hits.timestamps)
    counts = hits.values("SampleCount")
    # Invocation counts as bars on a second axis behind the ratio; the phases are shaded
    # on that lowest axis, so that nothing covers the bars.
    twin = bottom.twinx()
    _shade(twin, axis, phases, notes=True)
    bottom.set_zorder(twin.get_zorder() + 1)
    bottom.patch.set_visible(False)
    (line_hits,) = bottom.plot(
        *_with_gaps(xs, hits.values("Average"), metrics.period / axis.scale),
        color=_HIT_COLOR,
        lw=1.2,
        marker="o",
        ms=3.5,
        label="ModelCacheHit (Average = hits / invocations)",
    )
    handles.append(line_hits)
    bottom.set_ylim(-0.05, 1.4)
    bottom.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    bottom.set_ylabel("cache hit ratio", color=_HIT_COLOR)
    bottom.tick_params(axis="y", labelcolor=_HIT_COLOR)
    bottom.grid(axis="y", alpha=0.3)
    if any(not math.isnan(c) for c in counts):
        handles.append(
            twin.bar(
                xs,
                [0.0 if math.isnan(c) else c for c in counts],
                width=0.8 * metrics.period / axis.scale,
                align="edge",
                color="#999999",
                alpha=0.35,
                label=f"invocations per {metrics.period} s (ModelCacheHit SampleCount)",
            )
        )
        twin.set_ylabel(f"invocations per {metrics.period} s", color="#666666")
        twin.tick_params(axis="y", labelcolor="#666666")
        top_count = max((c for c in counts if not math.isnan(c)), default=1.0)
        twin.set_ylim(0, top_count * 2.6)  # bars stay in the lower part, under the ratio
    else:
        twin.set_yticks([])
    bottom.set_xlabel(axis.label)
    bottom.set_xlim(0, axis.x(metrics.end))
    figure.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    return _save(figure, path)


def _save(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def write_charts(
    metrics: EndpointMetrics,
    out_dir: Path,
    *,
    phases: Sequence[Phase] = (),
    model_capacity: int | None = None,
) -> list[Path]:
    """Write both charts into ``out_dir`` (created if missing); return their paths.

    Parameters
    ----------
    metrics
        What to draw (any period).
    phases
        Stretches to shade and label, e.g. the cache experiment's phases.
    model_capacity
        How many models fit in the endpoint's memory, drawn as a line when given.

    Raises
    ------
    ValueError
        The metrics hold no datapoint at all: there is nothing to draw.
    """
    if metrics.empty:
        raise ValueError(
            f"no metrics for endpoint {metrics.endpoint_name} between "
            f"{metrics.start:%Y-%m-%d %H:%M:%S} and {metrics.end:%H:%M:%S} UTC"
        )
    return [
        plot_models_and_memory(
            metrics, out_dir / MODELS_MEMORY_CHART, phases=phases, model_capacity=model_capacity
        ),
        plot_models_memory_and_cache_hit(
            metrics, out_dir / CACHE_HIT_CHART, phases=phases, model_capacity=model_capacity
        ),
    ]
