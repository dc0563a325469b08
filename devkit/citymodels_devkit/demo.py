"""``citymodels demo``: the notebook's story, run on this machine.

At this stage the demo runs the pipeline's code in-process (the local stack, which
runs it event-driven behind S3, EventBridge and the endpoint, comes next): generate
cities (notebook §1), process each upload as the processing job does (§2), train one
Linear Learner per city (§3), then answer price queries through the inference
pipeline — preprocessor container, then the city's model (§5-6) — and compare the
errors with the best achievable, which the generator's ground truth tells.
"""

from __future__ import annotations

import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from citymodels.schema import FEATURES
from citymodels.versions import mint_version
from citymodels_devkit.datagen import (
    CityTruth,
    generate,
    load_ground_truth,
    true_price,
    write_dataset,
)
from citymodels_devkit.localrun import (
    CityRun,
    Pipeline,
    mean_absolute_error,
    read_raw_test,
    run_city,
)


@dataclass(frozen=True)
class CityResult:
    """One city's outcome in the demo."""

    run: CityRun
    truth: CityTruth
    test_mae: float
    truth_mae: float


def _progress(console: Console) -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _evaluate(run: CityRun, truth: CityTruth) -> CityResult:
    features, prices = read_raw_test(run.processed_dir)
    predicted = Pipeline(run.model_path).predict_raw(features)
    columns = {name: [row[i] for row in features] for i, name in enumerate(FEATURES)}
    ideal = true_price(truth, columns)
    return CityResult(
        run=run,
        truth=truth,
        test_mae=mean_absolute_error(predicted, prices),
        truth_mae=mean_absolute_error(list(ideal), prices),
    )


def _results_table(results: list[CityResult]) -> Table:
    table = Table(title="Per-city test error (100 held-out houses each)", title_justify="left")
    table.add_column("city")
    table.add_column("rows", justify="right")
    table.add_column("test MAE", justify="right")
    table.add_column("true formula MAE", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("noise floor", justify="right")
    table.add_column("train", justify="right")
    for r in results:
        ratio = r.test_mae / r.truth_mae
        style = "green" if ratio <= 1.05 else "yellow" if ratio <= 1.15 else "red"
        table.add_row(
            r.run.city,
            f"{r.run.rows:,}",
            f"${r.test_mae:,.0f}",
            f"${r.truth_mae:,.0f}",
            f"[{style}]{ratio:.3f}[/{style}]",
            f"${r.truth.mae_floor:,.0f}",
            f"{r.run.train_seconds * 1000:.0f} ms",
        )
    return table


def _predictions_table(results: list[CityResult], seed: int) -> tuple[Table, list[float]]:
    table = Table(
        title="One house, priced by five cities' models (through the inference pipeline)",
        title_justify="left",
    )
    for name, justify in [("city", "left"), ("house", "left"), ("predicted", "right"),
                          ("true price", "right"), ("latency", "right")]:  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    latencies: list[float] = []
    for r in results[:5]:
        pipeline = Pipeline(r.run.model_path)
        _, fresh, _ = next(generate(1, 1, seed=seed + 1000, noise=0.0))
        row = [str(fresh.columns()[name][0]) for name in FEATURES]
        columns = {name: [row[i]] for i, name in enumerate(FEATURES)}
        for _ in range(50):  # warm, then time the pipeline's steady-state latency
            start = time.perf_counter()
            predicted = pipeline.predict_raw([row])[0]
            latencies.append(time.perf_counter() - start)
        house = f"{float(row[1]):,.0f} ft², {row[2]} bd, {row[3]} ba, {row[0]}"
        table.add_row(
            r.run.city,
            house,
            f"${predicted:,.0f}",
            f"${float(true_price(r.truth, columns)[0]):,.0f}",
            f"{statistics.median(latencies[-50:]) * 1e6:.0f} µs",
        )
    return table, latencies


def _plot(results: list[CityResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), dpi=100)
    for r in results:
        features, prices = read_raw_test(r.run.processed_dir)
        predicted = Pipeline(r.run.model_path).predict_raw(features)
        actual_k, predicted_k = np.array(prices) / 1e3, np.array(predicted) / 1e3
        left.scatter(actual_k, predicted_k, s=8, alpha=0.7, label=r.run.city)
    low, high = left.get_xlim()
    left.plot([low, high], [low, high], color="black", linewidth=0.8, linestyle="--")
    left.set_xlabel("actual price (k$)")
    left.set_ylabel("predicted price (k$)")
    left.set_title("Held-out houses: predicted vs actual")
    left.legend(fontsize=7, markerscale=2, ncol=2)

    names = [r.run.city for r in results]
    x = np.arange(len(results))
    right.bar(x - 0.2, [r.test_mae / 1e3 for r in results], 0.4, label="model test MAE")
    right.bar(x + 0.2, [r.truth_mae / 1e3 for r in results], 0.4, label="true formula MAE")
    right.axhline(results[0].truth.mae_floor / 1e3, color="black", linewidth=0.8, linestyle=":",
                  label="noise floor σ·√(2/π)")  # fmt: skip
    right.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    right.set_ylabel("mean absolute error (k$)")
    right.set_title("Test error per city vs the best achievable")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_demo(work_dir: Path, *, cities: int, rows: int, seed: int, noise: float) -> int:
    """Run the demo under ``work_dir`` and print its results; return the exit status."""
    console = Console()
    started = time.perf_counter()
    if work_dir.exists():
        shutil.rmtree(work_dir)
    data_dir = work_dir / "data"
    console.rule("[bold]citymodels demo")
    console.print(
        f"1. generating {cities} cities x {rows:,} rows (seed {seed}, noise ${noise:,.0f})"
    )
    summary = write_dataset(data_dir, cities, rows, seed=seed, noise=noise)
    truths = load_ground_truth(data_dir)

    console.print("2-3. processing each upload and training one Linear Learner per city")
    results: list[CityResult] = []
    with _progress(console) as progress:
        task = progress.add_task("process + train", total=len(summary.cities))
        for i, (city, path) in enumerate(zip(summary.cities, summary.csv_paths, strict=True)):
            # A version id as the upload event would mint it: its time and S3 sequencer.
            run = mint_version(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), f"{i + 1:016X}")
            city_run = run_city(city, path, work_dir / "runs", run)
            results.append(_evaluate(city_run, truths[city]))
            progress.update(task, advance=1, description=f"process + train {city}")

    console.print(_results_table(results))
    ratios = [r.test_mae / r.truth_mae for r in results]
    console.print(
        f"mean test MAE / true-formula MAE: [bold]{statistics.mean(ratios):.3f}[/bold] "
        f"(1.000 is the best any model can do on these rows); median training time "
        f"{statistics.median(r.run.train_seconds for r in results) * 1000:.0f} ms"
    )
    table, latencies = _predictions_table(results, seed)
    console.print(table)
    console.print(
        f"median latency of one query through preprocessor + model: "
        f"{statistics.median(latencies) * 1e6:.0f} µs"
    )
    chart = work_dir / "predictions.png"
    _plot(results, chart)
    console.print(f"chart: {chart}")
    console.print(f"done in {time.perf_counter() - started:.1f} s; everything is under {work_dir}/")
    return 0
