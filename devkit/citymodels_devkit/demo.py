"""``citymodels demo``: the notebook's sections 1-10, on the local stack.

The demo starts the local stack in this process (ports picked by the system, so it
never clashes with another stack) and drives it only as a user would: CSVs dropped into
the DataBucket with boto3, the HTTP API with API keys, ``sagemaker-runtime``
``InvokeEndpoint``, CloudWatch (:mod:`citymodels_devkit.metrics`), and the operator
functions the CLI uses (:mod:`citymodels_devkit.operations`). Its steps follow the
notebook:

== ============================================================ ==========
#  step                                                         notebook
== ============================================================ ==========
1  generate the cities' data                                    §1
2  start the local stack (endpoint, pipeline, functions, API)   §4-5
3  drop the CSVs into raw/: process, train, publish             §2-5
4  price one house in every city through the API                §6
5  add a city live: drop its CSV, no restart                    §7
6  the cache experiment: 200 model copies, CloudWatch charts    §8
7  per-city access: an API key for one city, the IAM policy     §9
8  roll a city back to an earlier version                       (citymodels)
9  clean up                                                     §10
== ============================================================ ==========

What the functions print (Powertools' logs and EMF metrics: CloudWatch Logs on AWS)
goes to ``functions.log`` in the work directory, so the demo's own output stays
readable. The stack is always stopped at the end, also on an error or Ctrl-C, unless
``keep_running`` is asked for (then Ctrl-C or ``citymodels local down`` stops it).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from citymodels.registry import FINAL, PROCESSING, PUBLISHED, TRAINING
from citymodels.schema import FEATURES
from citymodels_devkit.api_client import Answer, ApiClient
from citymodels_devkit.datagen import CityTruth, generate_city, true_price, write_dataset
from citymodels_devkit.operations import OperationFailed, UsageError

if TYPE_CHECKING:
    from citymodels_devkit.local.stack import LocalStack
    from citymodels_devkit.stack import Stack

INSTANCE_MEMORY_MB = 16_384.0
"""The endpoint instance's memory (an ml.m5.xlarge), the denominator of MemoryUtilization."""
BASELINE_MEMORY_MB = 1_024.0
"""Memory in use with no model loaded."""
MODELS_MEMORY_MB = 12_000.0
"""Memory the models may fill: with the baseline, ~79 % of the instance when full, as
in the notebook's charts."""
FIT_SHARE = 0.6
"""Share of the copies that fit in memory (the notebook: 121 of 200)."""
PHASE_GAP_SECONDS = 1.5
"""Pause between the cache experiment's phases: longer than the metrics period, so each
second's metrics belong to one phase."""
METRICS_WAIT_SECONDS = 10.0
"""How long the last phase's metrics may take to reach CloudWatch."""
CHART_LEAD_SECONDS = 3.0
"""Seconds of metrics before the first phase on the charts (the level it starts from)."""
COPY_THREADS = 8
"""Concurrent CopyObject calls when making the copies (setup, not the experiment)."""
WAIT_TIMEOUT_SECONDS = 300.0
ALIAS_WAIT_SECONDS = 15.0
"""How long a moved alias may take to answer (the template's AliasCacheSeconds is 5)."""
WARM_CALLS = 5
"""Calls per city after the first, for the warm latency."""
HOUSE_SEED_OFFSET = 1000
"""The priced house comes from another seed than the training data: a house never seen."""
NOTEBOOK_SECTIONS = {
    1: "§1",
    2: "§4-5",
    3: "§2-5",
    4: "§6",
    5: "§7",
    6: "§8",
    7: "§9",
    8: "",
    9: "§10",
}


@dataclass(frozen=True)
class DemoOptions:
    """What ``citymodels demo`` runs.

    Attributes
    ----------
    work_dir
        Data, the stack's files, charts and logs; what the demo writes there is
        replaced, nothing else is touched.
    cities
        Cities generated; all but the last are uploaded at once (§2-5), the last is
        added live (§7). At least 2.
    rows, seed, noise
        The generated data (rows per city, seed, price noise sigma in dollars).
    copies
        Model copies in the cache experiment (§8); the endpoint's memory fits about
        60 % of them. At least 4.
    keep_running
        Leave the stack up at the end (until Ctrl-C or ``citymodels local down``).
    job_workers
        Processes running the SageMaker jobs.
    """

    work_dir: Path
    cities: int = 10
    rows: int = 1000
    seed: int = 42
    noise: float = 10_000.0
    copies: int = 200
    keep_running: bool = False
    job_workers: int = 3

    def check(self) -> None:
        """Raise :class:`UsageError` for options the demo cannot run with."""
        if self.cities < 2:
            raise UsageError("--cities must be at least 2 (one is added live)", field="cities")
        if self.copies < 4:
            raise UsageError("--copies must be at least 4", field="copies")
        if self.rows < 100:
            raise UsageError("--rows must be at least 100 (to train and test on)", field="rows")
        if self.seed < 0 or not (math.isfinite(self.noise) and self.noise >= 0):
            raise UsageError("--seed and --noise must be at least 0", field="seed")


@dataclass(frozen=True)
class MemorySizing:
    """How the endpoint's memory is bounded so that the cache experiment evicts.

    Each loaded model stands for ``model_overhead_mb`` (a Linear Learner container holds
    far more than the weights), and the memory tier takes ``max_memory_mb`` of models:
    ``fit`` models, about 60 % of the copies, as the notebook's instance kept 121 of 200.
    """

    fit: int
    model_overhead_mb: float
    max_memory_mb: float

    @classmethod
    def for_copies(cls, copies: int) -> MemorySizing:
        """Return the sizing for an experiment with ``copies`` model copies."""
        fit = max(3, round(copies * FIT_SHARE))
        overhead = MODELS_MEMORY_MB / fit
        # Half a model of slack: the models' own few KB never decide whether one fits.
        return cls(fit=fit, model_overhead_mb=overhead, max_memory_mb=fit * overhead + overhead / 2)

    @property
    def full_utilization(self) -> float:
        """MemoryUtilization (percent) with ``fit`` models loaded."""
        return (BASELINE_MEMORY_MB + self.fit * self.model_overhead_mb) / INSTANCE_MEMORY_MB * 100


@dataclass
class PhaseResult:
    """One phase of the cache experiment, as the client saw it and CloudWatch recorded it."""

    label: str
    targets: int
    started: float
    ended: float
    window: tuple[float, float]
    """Whole seconds ``[start, end)`` holding exactly this phase's published metrics."""
    latencies_ms: list[float]
    hit_ratio: float | None = None
    invocations: float = 0.0
    loads: float = 0.0
    loading_us: float = 0.0
    """Sum of ModelLoadingTime (microseconds)."""
    downloads: float = 0.0
    downloading_us: float = 0.0
    """Sum of ModelDownloadingTime (microseconds)."""
    unloads: float = 0.0


@dataclass
class DemoResult:
    """What a demo run produced (returned for tests and callers)."""

    outputs: dict[str, str] = field(default_factory=dict)
    published: dict[str, str] = field(default_factory=dict)
    """City to the version published by its first upload."""
    predictions: dict[str, dict[str, float]] = field(default_factory=dict)
    phases: list[PhaseResult] = field(default_factory=list)
    peak_loaded_models: float | None = None
    peak_memory_utilization: float | None = None
    charts: list[Path] = field(default_factory=list)
    access: dict[str, int] = field(default_factory=dict)
    """City to the HTTP status the one-city key got."""
    rollback: dict[str, str] = field(default_factory=dict)
    timings: list[tuple[str, float]] = field(default_factory=list)


# -- plumbing ----------------------------------------------------------------------------


class _LogSink:
    """A text stream writing to a file while it is open, and to nowhere after.

    The functions' loggers keep the stream they were created with; once the demo is over
    they must not write to a closed file.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO | None = path.open("w", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            if self._file is not None:
                self._file.write(text)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


@contextlib.contextmanager
def _functions_log(path: Path) -> Iterator[None]:
    """Send what the functions print, and Python warnings, to ``path`` meanwhile."""
    sink = _LogSink(path)
    saved = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:  # fmt: skip
        sink.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = show
    try:
        with contextlib.redirect_stdout(sink):
            yield
    finally:
        warnings.showwarning = saved
        sink.close()


def _instance(columns: Mapping[str, Any], i: int = 0) -> dict[str, Any]:
    """Row ``i`` of raw columns as an API instance (plain Python values)."""
    instance: dict[str, Any] = {}
    for name in FEATURES:
        value = columns[name][i]
        instance[name] = value.item() if hasattr(value, "item") else value
    return instance


def _test_mae(metrics: Mapping[str, float]) -> float | None:
    """A run's test MAE: the training job's, else the quality gate's on the same rows."""
    for name in ("test:mae", "test:absolute_loss", "gate:candidate_mae"):
        if name in metrics:
            return float(metrics[name])
    return None


def _ms(milliseconds: float) -> str:
    return f"{milliseconds:.0f} ms" if milliseconds >= 100 else f"{milliseconds:.1f} ms"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _money(value: float) -> str:
    return f"${value:,.0f}"


def _sleep_to_whole_second(after: float) -> float:
    """Sleep until the first whole second at least ``after`` seconds from now; return it."""
    target = float(math.ceil(time.time() + after))
    time.sleep(max(0.0, target - time.time()))
    return target


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# -- the demo ----------------------------------------------------------------------------


class Demo:
    """The demo's steps, sharing the running stack and its clients."""

    def __init__(self, options: DemoOptions, console: Console) -> None:
        self.options = options
        self.console = console
        self.work_dir = options.work_dir
        self.data_dir = options.work_dir / "data"
        self.charts_dir = options.work_dir / "charts"
        self.outputs_path = options.work_dir / "outputs.json"
        self.log_path = options.work_dir / "functions.log"
        self.sizing = MemorySizing.for_copies(options.copies)
        self.result = DemoResult()
        self.cities: list[str] = []
        self.truths: dict[str, CityTruth] = {}
        self.csv_paths: dict[str, Path] = {}
        self.local: LocalStack | None = None
        self.stack: Stack | None = None
        self.api: ApiClient | None = None
        self._step = 0

    # -- helpers -----------------------------------------------------------------------

    @property
    def outputs(self) -> dict[str, str]:
        return self.result.outputs

    def _client(self, service: str) -> Any:
        assert self.stack is not None
        return self.stack.client(service)

    def _api(self) -> ApiClient:
        assert self.api is not None
        return self.api

    def _header(self, title: str) -> None:
        self._step += 1
        section = NOTEBOOK_SECTIONS.get(self._step, "")
        where = f" [dim](notebook {section})[/dim]" if section else ""
        self.console.print()
        self.console.rule(f"[bold]{self._step}. {title}[/bold]{where}", align="left")

    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.result.timings.append((name, time.perf_counter() - started))

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
        )

    def _table(self, *columns: str, title: str | None = None, right: tuple[str, ...] = ()) -> Table:
        table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
        for column in columns:
            table.add_column(column, justify="right" if column in right else "left")
        return table

    def _city_detail(self, city: str) -> dict[str, Any] | None:
        status, body, _ = self._api().call("GET", f"cities/{city}")
        if status == 404:
            return None
        if status != 200:
            raise OperationFailed(f"GET /cities/{city} answered {status}: {body}")
        return dict(body)

    def _upload(self, city: str, name: str, data: bytes) -> str:
        key = f"raw/{city}/{name}"
        self._client("s3").put_object(
            Bucket=self.outputs["DataBucket"], Key=key, Body=data, ContentType="text/csv"
        )
        return key

    def _predict(self, city: str, instances: list[dict[str, Any]], *, key: str | None = None
                 ) -> Answer:  # fmt: skip
        return self._api().call(
            "POST", f"cities/{city}/predictions", {"instances": instances}, key=key
        )

    def _wait_final(
        self, uploads: Mapping[str, str], progress: Progress, bars: Mapping[str, TaskID]
    ) -> dict[str, dict[str, Any]]:
        """Poll ``GET /cities/{city}`` until each upload's run is final; return the uploads.

        ``bars`` holds a progress task per status (PROCESSING, TRAINING, PUBLISHED),
        advanced as cities reach it.
        """
        level = {PROCESSING: 1, TRAINING: 2}
        reached: dict[str, int] = dict.fromkeys(uploads, 0)
        final: dict[str, dict[str, Any]] = {}
        started = time.monotonic()
        deadline = started + WAIT_TIMEOUT_SECONDS
        while len(final) < len(uploads):
            for city, key in uploads.items():
                if city in final:
                    continue
                detail = self._city_detail(city)
                upload = next(
                    (u for u in (detail or {}).get("uploads", []) if u.get("key") == key), None
                )
                if upload is None:
                    continue
                status = upload["status"]
                reached[city] = max(reached[city], level.get(status, 3 if status in FINAL else 0))
                if status in FINAL:
                    final[city] = {**upload, "seconds": time.monotonic() - started}
            for status, task in bars.items():
                at_least = {PROCESSING: 1, TRAINING: 2, PUBLISHED: 3}[status]
                progress.update(task, completed=sum(1 for r in reached.values() if r >= at_least))
            if len(final) < len(uploads):
                if time.monotonic() > deadline:
                    waiting = sorted(set(uploads) - set(final))
                    raise OperationFailed(
                        f"gave up after {WAIT_TIMEOUT_SECONDS:.0f} s waiting for {', '.join(waiting)}"
                    )
                time.sleep(0.3)
        return final

    def _status_bars(self, progress: Progress, total: int) -> dict[str, TaskID]:
        return {
            status: progress.add_task(f"{status:<10}", total=total)
            for status in (PROCESSING, TRAINING, PUBLISHED)
        }

    # -- 1. §1 synthetic data ----------------------------------------------------------

    def generate_data(self) -> None:
        opts = self.options
        self._header("Synthetic data: one CSV per city")
        self.console.print(
            f"{opts.cities} cities x {opts.rows:,} houses (seed {opts.seed}, price noise "
            f"σ = {_money(opts.noise)}), headerless as in the notebook, with each city's true "
            "price formula in ground_truth.json"
        )
        summary = write_dataset(
            self.data_dir, opts.cities, opts.rows, seed=opts.seed, noise=opts.noise
        )
        from citymodels_devkit.datagen import load_ground_truth

        self.truths = load_ground_truth(self.data_dir)
        self.cities = list(summary.cities)
        self.csv_paths = dict(zip(summary.cities, summary.csv_paths, strict=True))
        first = self.cities[0]
        table = self._table(
            "year", "sq ft", "beds", "baths", "acres", "garage", "porch", "deck", "price",
            title=f"{first}.csv, first 5 rows (houses.head())",
            right=("year", "sq ft", "beds", "baths", "acres", "garage", "price"),
        )  # fmt: skip
        for line in self.csv_paths[first].read_text().splitlines()[:5]:
            cells = line.split(",")
            cells[-1] = _money(float(cells[-1]))
            table.add_row(*cells)
        self.console.print(table)
        self.console.print(
            f"wrote {summary.total_bytes / 1e6:.1f} MB to {summary.out_dir}/ "
            f"({', '.join(self.cities[:3])}, ...)"
        )

    # -- 2. §4-5 the local stack ---------------------------------------------------------

    def start_stack(self) -> None:
        from citymodels_devkit.local.stack import LocalOptions, LocalStack, write_outputs
        from citymodels_devkit.stack import Stack

        opts, sizing = self.options, self.sizing
        self._header("The local stack: endpoint, pipeline, functions, API")
        self.console.print(
            "template.yaml on this machine: S3, EventBridge, DynamoDB, CloudWatch (moto), "
            "SageMaker jobs that really run, the multi-model endpoint \\[preprocessor → "
            "Linear Learner], the functions and the HTTP API."
        )
        self.local = LocalStack(
            None,
            LocalOptions(
                stack_name="citymodels-demo",
                aws_port=0,
                api_port=0,
                parameter_overrides={"LogLevel": "WARNING"},
                work_dir=self.work_dir / "local",
                mme_max_memory_mb=sizing.max_memory_mb,
                model_overhead_mb=sizing.model_overhead_mb,
                instance_memory_mb=INSTANCE_MEMORY_MB,
                baseline_memory_mb=BASELINE_MEMORY_MB,
                job_workers=opts.job_workers,
            ),
        )
        with self.console.status("starting the local stack"):
            outputs = self.local.start()
        self.result.outputs = dict(outputs)
        write_outputs(outputs, self.outputs_path)
        self.stack = Stack(outputs_file=self.outputs_path)
        self.api = ApiClient(outputs["ApiUrl"], outputs["AdminApiKey"])
        # one line per output, never folded mid-word: URLs and names are copied from here
        self.console.print("stack outputs")
        width = max(map(len, outputs), default=0)
        for name, value in outputs.items():
            shown = value[:12] + "…" if name == "AdminApiKey" else value
            self.console.print(Text(f"  {name:<{width}}  {shown}"), soft_wrap=True)
        self.console.print(
            f"endpoint memory: {INSTANCE_MEMORY_MB / 1024:.0f} GiB instance, each model "
            f"standing for {sizing.model_overhead_mb:,.0f} MB: {sizing.fit} models fit "
            f"(~{sizing.full_utilization:.0f} % memory), as the notebook's instance kept "
            f"121 of 200. Outputs in {self.outputs_path}; the functions' log in {self.log_path}."
        )

    # -- 3. §2-5 uploads → processing → training → publish -------------------------------

    def publish_cities(self) -> None:
        first_wave = self.cities[:-1]
        self._header(f"Drop {len(first_wave)} CSVs into raw/: process, train, publish")
        self.console.print(
            "Each upload fires the onboard function (EventBridge), which starts a processing "
            "job (§2); its completion starts a Linear Learner training job (§3); its "
            "completion publishes the model to mme/ for the endpoint (§4-5) after the "
            "quality gate. Followed through GET /cities/{city}."
        )
        uploads = {
            city: self._upload(city, self.csv_paths[city].name, self.csv_paths[city].read_bytes())
            for city in first_wave
        }
        with self._progress() as progress:
            final = self._wait_final(uploads, progress, self._status_bars(progress, len(uploads)))
        failed = {c: u for c, u in final.items() if u["status"] != PUBLISHED}
        if failed:
            city, upload = next(iter(failed.items()))
            raise OperationFailed(
                f"{city}'s upload ended {upload['status']}: {upload.get('reason') or 'no reason'}"
            )
        table = self._table(
            "city", "test MAE", "noise floor", "published after",
            title="published models (test MAE: the run's held-out 10 %)",
            right=("test MAE", "noise floor", "published after"),
        )  # fmt: skip
        for city in first_wave:
            upload = final[city]
            self.result.published[city] = upload["version"]
            mae = _test_mae(upload.get("metrics") or {})
            table.add_row(
                city,
                _money(mae) if mae is not None else "-",
                _money(self.truths[city].mae_floor),
                f"{upload['seconds']:.1f} s",
            )
        self.console.print(table)
        self.console.print(
            "noise floor: σ·√(2/π), the error of the true formula itself; no model can expect less."
        )

    # -- 4. §6 predictions per city ------------------------------------------------------

    def _house(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """One house no model has seen: (API instance, raw columns)."""
        table, _ = generate_city(
            self.cities[0], 1, seed=self.options.seed + HOUSE_SEED_OFFSET, noise=0.0, index=0
        )
        columns = table.columns()
        return _instance(columns), columns

    def predict_cities(self) -> None:
        self._header("Predictions per city through the HTTP API")
        instance, columns = self._house()
        self.console.print(
            f"POST /cities/{{city}}/predictions with one house: {instance['SQUARE_FEET']:,} ft², "
            f"{instance['NUM_BEDROOMS']} bedrooms, {instance['NUM_BATHROOMS']} bathrooms, "
            f"{instance['LOT_ACRES']} acres, {instance['GARAGE_SPACES']} garage spaces, built "
            f"{instance['YEAR_BUILT']}, porch {instance['FRONT_PORCH']}, deck {instance['DECK']}"
        )
        table = self._table(
            "city", "predicted", "true price", "error", "first", "warm",
            right=("predicted", "true price", "error", "first", "warm"),
        )  # fmt: skip
        warm_latencies: list[float] = []
        for city in self.cities[:-1]:
            status, body, first = self._predict(city, [instance])
            if status != 200:
                raise OperationFailed(f"predicting in {city} answered {status}: {body}")
            warm = statistics.median(self._predict(city, [instance])[2] for _ in range(WARM_CALLS))
            warm_latencies.append(warm)
            price = float(body["predictions"][0]["price"])
            truth = float(true_price(self.truths[city], columns)[0])
            self.result.predictions[city] = {
                "price": price,
                "true": truth,
                "first_ms": first,
                "warm_ms": warm,
            }
            table.add_row(
                city,
                _money(price),
                _money(truth),
                f"{(price - truth) / truth * 100:+.1f}%",
                _ms(first),
                _ms(warm),
            )
        self.console.print(table)
        self.console.print(
            "true price: the generator's formula without noise. Latency: the client's round "
            "trip through the API Gateway authorizer, the predict function and InvokeEndpoint "
            "(preprocessor container → the city's Linear Learner); the first call of a city "
            f"includes cold starts, warm is the median of {WARM_CALLS} more "
            f"(median over cities {statistics.median(warm_latencies):.1f} ms)."
        )

    # -- 5. §7 a city added live ---------------------------------------------------------

    def add_city_live(self) -> None:
        city = self.cities[-1]
        self._header(f"Add {city} live: drop its CSV, no restart")
        instance, columns = self._house()
        # GET, not a prediction: the predict function would cache the answer "unknown
        # city" for AliasCacheSeconds, as it caches every alias lookup.
        status, body, _ = self._api().call("GET", f"cities/{city}")
        message = body.get("message", body) if isinstance(body, dict) else body
        self.console.print(f"before: GET /cities/{city} → {status} ({message})")
        started = time.monotonic()
        key = self._upload(city, self.csv_paths[city].name, self.csv_paths[city].read_bytes())
        with self._progress() as progress:
            final = self._wait_final({city: key}, progress, self._status_bars(progress, 1))
        upload = final[city]
        if upload["status"] != PUBLISHED:
            raise OperationFailed(
                f"{city}'s upload ended {upload['status']}: {upload.get('reason')}"
            )
        self.result.published[city] = upload["version"]
        status, body, latency = self._predict(city, [instance])
        if status != 200:
            raise OperationFailed(f"predicting in {city} answered {status}: {body}")
        price = float(body["predictions"][0]["price"])
        truth = float(true_price(self.truths[city], columns)[0])
        self.result.predictions[city] = {"price": price, "true": truth, "first_ms": latency}
        self.console.print(
            f"after:  {status}, {_money(price)} (true {_money(truth)}, "
            f"{(price - truth) / truth * 100:+.1f}%) in {_ms(latency)}, "
            f"{time.monotonic() - started:.1f} s after the upload; version {body['model_version']}"
        )

    # -- 6. §8 the cache experiment ------------------------------------------------------

    def cache_experiment(self) -> None:
        from citymodels_devkit.metrics import read_endpoint_metrics
        from citymodels_devkit.plots import Phase, write_charts

        opts = self.options
        city = self.cities[-1]
        version = self.result.published[city]
        copies, half = opts.copies, opts.copies // 2
        self._header(f"The cache experiment: {copies} copies of {city}'s model")
        self.console.print(
            f"As the notebook: copy the model to {copies} new TargetModels "
            f"({city}/0_{city}.tar.gz ...) in mme/, then call InvokeEndpoint (boto3 "
            f"sagemaker-runtime, one call at a time) on (a) the first {half}, (b) the same "
            f"{half} again, (c) all {copies}; then read the endpoint's metrics back from "
            "CloudWatch."
        )
        targets = [f"{city}/{i}_{city}.tar.gz" for i in range(copies)]
        self._copy_models(f"mme/{city}/{version}.tar.gz", targets)
        phases = self._invoke_phases(
            [
                (f"a. first {half}", targets[:half]),
                (f"b. same {half} again", targets[:half]),
                (f"c. all {copies}", targets),
            ]
        )
        cloudwatch = self._client("cloudwatch")
        endpoint = self.outputs["EndpointName"]
        with self.console.status("reading the metrics back from CloudWatch"):
            # The last second's metrics may still be on their way: wait until the last
            # window holds every call of its phase.
            deadline = time.monotonic() + METRICS_WAIT_SECONDS
            while True:
                self._phase_metrics(cloudwatch, phases[-1])
                if phases[-1].invocations >= phases[-1].targets or time.monotonic() > deadline:
                    break
                time.sleep(0.25)
            for phase in phases[:-1]:
                self._phase_metrics(cloudwatch, phase)
            metrics = read_endpoint_metrics(
                cloudwatch,
                endpoint,
                start=_utc(phases[0].window[0] - CHART_LEAD_SECONDS),
                end=_utc(phases[-1].window[1]),
                period=1,
            )
        for phase in phases:
            if phase.invocations != phase.targets:
                self.console.print(
                    f"[yellow]CloudWatch counted {phase.invocations:.0f} invocations in phase "
                    f"{phase.label!r}'s window for {phase.targets} calls: the endpoint "
                    "published late (a busy machine); its figures mix with a neighbour's[/yellow]"
                )
        self.result.phases = phases
        self.result.peak_loaded_models = metrics["LoadedModelCount"].maximum()
        self.result.peak_memory_utilization = metrics["MemoryUtilization"].maximum()
        self._render_phases(phases)
        self.result.charts = write_charts(
            metrics,
            self.charts_dir,
            # Shaded as the whole seconds whose metrics are the phase's: the endpoint
            # publishes each second's metrics at its end, so they trail the calls.
            phases=[
                Phase(
                    p.label,
                    _utc(p.window[0]),
                    _utc(p.window[1]),
                    f"hit ratio {p.hit_ratio:.2f}" if p.hit_ratio is not None else "",
                )
                for p in phases
            ],
            model_capacity=self.sizing.fit,
        )
        self._render_metrics_summary(phases)

    def _copy_models(self, source: str, targets: list[str]) -> None:
        """Copy one model artifact to each TargetModel (setup, so in parallel)."""
        from concurrent.futures import ThreadPoolExecutor, as_completed

        bucket = self.outputs["DataBucket"]
        s3 = self._client("s3")

        def copy(target: str) -> None:
            s3.copy_object(
                Bucket=bucket, CopySource={"Bucket": bucket, "Key": source}, Key=f"mme/{target}"
            )

        with self._progress() as progress, ThreadPoolExecutor(COPY_THREADS) as pool:
            task = progress.add_task("copy_object", total=len(targets))
            for done in as_completed([pool.submit(copy, t) for t in targets]):
                done.result()
                progress.advance(task)

    def _invoke_phases(self, plan: list[tuple[str, list[str]]]) -> list[PhaseResult]:
        """Invoke each phase's TargetModels in turn; time them and the metric windows."""
        runtime = self._client("sagemaker-runtime")
        endpoint = self.outputs["EndpointName"]
        instance, _ = self._house()
        body = (",".join(str(instance[name]) for name in FEATURES) + "\n").encode()
        phases: list[PhaseResult] = []
        with self._progress() as progress:
            tasks = [
                progress.add_task(label, total=len(group), start=False) for label, group in plan
            ]
            # Each phase starts on a whole second after the endpoint has published the
            # metrics of the calls before it: a second of metrics belongs to one phase.
            boundary = _sleep_to_whole_second(PHASE_GAP_SECONDS)
            for (label, group), task in zip(plan, tasks, strict=True):
                progress.start_task(task)
                latencies: list[float] = []
                started = time.time()
                for target in group:
                    began = time.perf_counter()
                    answer = runtime.invoke_endpoint(
                        EndpointName=endpoint, TargetModel=target, ContentType="text/csv", Body=body
                    )
                    json.loads(answer["Body"].read())
                    latencies.append((time.perf_counter() - began) * 1000)
                    progress.advance(task)
                ended = time.time()
                following = _sleep_to_whole_second(PHASE_GAP_SECONDS)
                phases.append(
                    PhaseResult(label, len(group), started, ended, (boundary, following), latencies)
                )
                boundary = following
        return phases

    def _phase_metrics(self, cloudwatch: Any, phase: PhaseResult) -> None:
        """Read one phase's totals from CloudWatch (its window of whole seconds)."""
        from citymodels_devkit.metrics import SAGEMAKER_NAMESPACE, MetricQuery, window_statistics

        start, end = (_utc(t) for t in phase.window)

        def total(name: str) -> dict[str, float]:
            query = MetricQuery(SAGEMAKER_NAMESPACE, name, ("Sum", "SampleCount"))
            return dict(
                window_statistics(
                    cloudwatch, self.outputs["EndpointName"], query, start=start, end=end
                ).values
            )

        hits = total("ModelCacheHit")
        phase.hit_ratio = hits["Sum"] / hits["SampleCount"] if hits.get("SampleCount") else None
        phase.invocations = total("Invocations").get("Sum", 0.0)
        loading = total("ModelLoadingTime")
        downloading = total("ModelDownloadingTime")
        phase.loads = loading.get("SampleCount", 0.0)
        phase.loading_us = loading.get("Sum", 0.0)
        phase.downloads = downloading.get("SampleCount", 0.0)
        phase.downloading_us = downloading.get("Sum", 0.0)
        phase.unloads = total("ModelUnloadingTime").get("SampleCount", 0.0)

    def _render_phases(self, phases: list[PhaseResult]) -> None:
        table = self._table(
            "phase", "calls", "ModelCacheHit", "loads", "unloads", "median", "p90",
            title="per phase: CloudWatch (AWS/SageMaker) and the client's round trips",
            right=("calls", "ModelCacheHit", "loads", "unloads", "median", "p90"),
        )  # fmt: skip
        for phase in phases:
            ordered = sorted(phase.latencies_ms)
            p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
            table.add_row(
                phase.label,
                f"{phase.invocations:.0f}",
                f"{phase.hit_ratio:.2f}" if phase.hit_ratio is not None else "-",
                f"{phase.loads:.0f}",
                f"{phase.unloads:.0f}",
                _ms(statistics.median(ordered)),
                _ms(p90),
            )
        self.console.print(table)

    def _render_metrics_summary(self, phases: list[PhaseResult]) -> None:
        peak = self.result.peak_loaded_models or 0.0
        memory = self.result.peak_memory_utilization or 0.0
        for path in self.result.charts:
            self.console.print(f"chart: [bold]{path}[/bold]", soft_wrap=True)
        a, b, c = (p.hit_ratio for p in phases)
        verdict = (
            "[green]1.00: every model was still in memory[/green]"
            if b == 1.0
            else f"[yellow]{b}: expected 1.00[/yellow]"
        )
        loads = sum(p.loads for p in phases)
        downloads = sum(p.downloads for p in phases)
        loading_ms = sum(p.loading_us for p in phases) / loads / 1000 if loads else math.nan
        downloading_ms = (
            sum(p.downloading_us for p in phases) / downloads / 1000 if downloads else math.nan
        )
        self.console.print(
            f"LoadedModelCount peaked at [bold]{peak:.0f}[/bold] (memory fits {self.sizing.fit}) "
            f"and MemoryUtilization at [bold]{memory:.1f} %[/bold] (the notebook: 121 models, "
            f"~79 %). ModelCacheHit: a {_ratio(a)} (every model loaded on its first call), "
            f"b {verdict}, c {_ratio(c)} (the second half loaded, evicting the least recently "
            f"used). A miss cost a download ({downloading_ms:.1f} ms mean ModelDownloadingTime) "
            f"and a load ({loading_ms:.2f} ms mean ModelLoadingTime)."
        )

    # -- 7. §9 per-city access -----------------------------------------------------------

    def per_city_access(self) -> None:
        from citymodels_devkit import operations

        city = self.cities[0]
        other = "Chicago_IL" if "Chicago_IL" in self.cities[1:] else self.cities[1]
        self._header(f"Per-city access: a key for {city} only")
        assert self.stack is not None
        secret, key = operations.create_key(
            self.stack.registry(), [city], description=f"demo: {city} only"
        )
        self.console.print(
            f"citymodels keys create --cities {city} → key {key.key_id} "
            f"(secret {secret[:10]}…, shown once; only its hash is stored)"
        )
        instance, _ = self._house()
        table = self._table(
            "city", "status", "answer",
            title=f"POST /cities/{{city}}/predictions with the {city} key",
            right=("status",),
        )  # fmt: skip
        for target in (city, other):
            status, body, _ = self._predict(target, [instance], key=secret)
            self.result.access[target] = status
            if status == 200:
                answer = (
                    f"{_money(body['predictions'][0]['price'])}, version {body['model_version']}"
                )
            else:
                answer = str(body.get("message", body) if isinstance(body, dict) else body)
            table.add_row(
                target, Text(str(status), "green" if status == 200 else "red"), Text(answer)
            )
        self.console.print(table)
        region = self.stack.region_name or "us-east-1"
        account, partition = operations.caller_account(self.stack.client("sts"))
        arn = operations.endpoint_arn(
            partition=partition,
            region=region,
            account=account,
            endpoint_name=self.outputs["EndpointName"],
        )
        policy = operations.access_policy([city], arn)
        self.console.print(
            f"For callers that invoke the endpoint directly (the notebook's IAM role), "
            f"citymodels access policy --cities {city} prints:"
        )
        self.console.print_json(json.dumps(policy))
        self.console.print(
            "[dim]Locally IAM is not enforced (moto records policies, never evaluates them); "
            "on AWS this policy denies any TargetModel outside "
            f"{city}/*, as the notebook's AccessDeniedException for Chicago_IL.[/dim]"
        )

    # -- 8. rollback ---------------------------------------------------------------------

    def rollback(self) -> None:
        opts = self.options
        city = self.cities[0]
        self._header(f"Roll {city} back to its first version")
        v1 = self.result.published[city]
        table2, _ = generate_city(
            city, opts.rows * 2, seed=opts.seed + 1, noise=opts.noise, index=0
        )
        data = table2.to_csv_bytes()
        path = self.data_dir / "updates" / f"{city}-v2.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        key = self._upload(city, path.name, data)
        self.console.print(f"a second upload, {opts.rows * 2:,} new houses: s3://…/{key}")
        with self._progress() as progress:
            final = self._wait_final({city: key}, progress, self._status_bars(progress, 1))
        upload = final[city]
        if upload["status"] != PUBLISHED:
            self.console.print(
                f"[yellow]the second upload ended {upload['status']}: {upload.get('reason')}; "
                f"{city} still serves {v1}: nothing to roll back[/yellow]"
            )
            return
        v2 = upload["version"]
        self.console.print(f"v1 {v1}  first upload")
        self.console.print(f"v2 {v2}  this upload")
        instance, _ = self._house()
        table = self._table(
            "", "answered by", "price", "after",
            title=f"POST /cities/{city}/predictions, one house",
            right=("price", "after"),
        )  # fmt: skip
        names = {v1: "v1", v2: "v2"}
        # The predict function caches the alias for AliasCacheSeconds: v2 answers once
        # the cache has expired everywhere.
        answer, waited = self._predict_until(city, instance, v2)
        table.add_row("v2 published", names.get(answer["model_version"], "?"),
                      _money(answer["predictions"][0]["price"]), f"{waited:.1f} s")  # fmt: skip
        status, body, _ = self._api().call("POST", f"cities/{city}/rollback", {"version": v1})
        if status != 200:
            raise OperationFailed(f"POST /cities/{city}/rollback answered {status}: {body}")
        self.console.print(
            f'POST /cities/{city}/rollback {{"version": "<v1>"}} with the admin key → '
            f"{status}, current_version v1, pinned: {body.get('pinned')}"
        )
        answer, waited = self._predict_until(city, instance, v1)
        table.add_row("rolled back", names.get(answer["model_version"], "?"),
                      _money(answer["predictions"][0]["price"]), f"{waited:.1f} s")  # fmt: skip
        self.console.print(table)
        self.result.rollback = {"v1": v1, "v2": v2, "after": answer["model_version"]}
        if answer["model_version"] != v1:
            raise OperationFailed(
                f"{city} still answered with {answer['model_version']} after the rollback"
            )
        self.console.print(
            "after: how long until the API answered with that version (the predict function "
            "caches a city's alias for AliasCacheSeconds, 5 s; the rollback clears it where it "
            "ran). The next newer upload publishes as usual."
        )

    def _predict_until(
        self, city: str, instance: dict[str, Any], version: str
    ) -> tuple[dict[str, Any], float]:
        """Predict until ``version`` answers (at most ~3 alias cache lifetimes)."""
        started = time.monotonic()
        while True:
            status, body, _ = self._predict(city, [instance])
            if status != 200:
                raise OperationFailed(f"predicting in {city} answered {status}: {body}")
            waited = time.monotonic() - started
            if body["model_version"] == version or waited > ALIAS_WAIT_SECONDS:
                return dict(body), waited
            time.sleep(0.25)

    # -- 9. §10 clean up -----------------------------------------------------------------

    def clean_up(self) -> None:
        from citymodels_devkit import operations

        self._header("Clean up")
        if self.options.keep_running:
            self.console.print("the stack is left running (--keep-running): see the end.")
        else:
            self.stop()
            self.console.print(
                "stopped the local stack: its servers, functions, job workers and endpoint."
            )
        bucket, stack_name = "<DataBucket>", "<stack name>"
        steps = operations.cleanup_next_steps(
            bucket, stack_name=stack_name, region=None, local=False
        )
        self.console.print(
            "On AWS the stack owns what the notebook deletes by hand (endpoint, models, "
            "roles); its data bucket is versioned and retained, so:"
        )
        table = Table(show_header=False, show_edge=False, box=None, pad_edge=False)
        table.add_column(no_wrap=True)
        table.add_column(style="dim")
        table.add_row(
            f"citymodels cleanup --stack-name {stack_name}",
            "empties the bucket: every upload, report and model version",
        )
        explained = {
            "sam delete": "deletes the stack: endpoint, functions, API, table, roles",
            "aws s3api delete-bucket": "then the empty bucket",
        }
        for step in steps:
            note = next((text for head, text in explained.items() if step.startswith(head)), None)
            if note is not None:
                table.add_row(step, note)
        self.console.print(table)

    def stop(self) -> None:
        """Stop the stack (idempotent)."""
        if self.api is not None:
            self.api.close()
            self.api = None
        if self.local is not None:
            self.local.stop()
            self.local = None
            # The file describes a running stack; a stopped one must not be found by it.
            self.outputs_path.unlink(missing_ok=True)

    # -- the end -------------------------------------------------------------------------

    def summary(self, total: float) -> None:
        self.console.print()
        self.console.rule("[bold]Summary[/bold]", align="left")
        table = self._table("step", "seconds", right=("seconds",))
        for name, seconds in self.result.timings:
            table.add_row(name, f"{seconds:.1f}")
        table.add_row(Text("total", style="bold"), Text(f"{total:.1f}", style="bold"))
        self.console.print(table)
        for path in self.result.charts:
            self.console.print(f"chart: {path}", soft_wrap=True)
        self.console.print(f"data, the stack's files and the functions' log: {self.work_dir}/")

    def serve_until_stopped(self, stop: threading.Event | None = None) -> None:
        """Keep the stack up until Ctrl-C or SIGTERM (``citymodels local down``), or
        ``stop``; its outputs go to ``.citymodels/outputs.json`` unless another local
        stack writes there (that stack's files are left alone)."""
        from citymodels_devkit.local.run import StackFiles, publish_outputs, release

        stop = stop or threading.Event()
        previous = {
            s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)
        }
        files = StackFiles.of()
        owns_default = publish_outputs(self.outputs, files)
        flags = "" if owns_default else f" --outputs {self.outputs_path}"
        self.console.print()
        if not owns_default:
            self.console.print(
                f"Another local stack writes {files.outputs}: left alone; this one's "
                f"outputs are in {self.outputs_path}.",
                soft_wrap=True,
            )
        self.console.print(
            f"[bold]The stack is still running.[/bold] Try: citymodels status{flags}, "
            f"citymodels predict {self.cities[0]}{flags} YEAR_BUILT=1995 SQUARE_FEET=2500 "
            "NUM_BEDROOMS=3 NUM_BATHROOMS=2 LOT_ACRES=0.5 GARAGE_SPACES=2 FRONT_PORCH=y DECK=n, "
            f"citymodels metrics{flags}; AWS clients: export AWS_ENDPOINT_URL="
            f"{self.outputs['AwsEndpointUrl']}",
            soft_wrap=True,  # commands to copy: never broken mid-word
        )
        self.console.print(
            "Stop it with Ctrl-C"
            + (" or, from another terminal, citymodels local down." if owns_default else ".")
        )
        try:
            while not stop.wait(0.5):
                pass
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if owns_default:
                release(files)
        self.console.print("stopping the local stack")


def _prepare(work_dir: Path) -> None:
    """Remove what an earlier demo wrote there (only that)."""
    for name in ("data", "local", "charts", "runs"):  # runs/: the in-process demo's
        shutil.rmtree(work_dir / name, ignore_errors=True)
    for name in ("outputs.json", "functions.log", "predictions.png"):
        (work_dir / name).unlink(missing_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)


def run_demo(options: DemoOptions, *, console: Console | None = None) -> DemoResult:
    """Run the demo; return what it produced.

    Parameters
    ----------
    options
        See :class:`DemoOptions`.
    console
        Where to print (default: this process's standard output as it is now; what the
        functions print goes to ``functions.log`` meanwhile).

    Raises
    ------
    UsageError
        Options the demo cannot run with.
    OperationFailed
        A step did not come out as it should (the message says which); the stack is
        stopped first.
    """
    options.check()
    console = console or Console(file=sys.stdout, highlight=False)
    demo = Demo(options, console)
    started = time.perf_counter()
    _prepare(options.work_dir)
    console.rule("[bold]citymodels demo: the notebook's sections 1-10 on the local stack[/bold]")
    steps: list[tuple[str, Callable[[], None]]] = [
        ("1. §1 synthetic data", demo.generate_data),
        ("2. start the local stack", demo.start_stack),
        (f"3. §2-5 publish {options.cities - 1} cities", demo.publish_cities),
        ("4. §6 predictions per city", demo.predict_cities),
        ("5. §7 add a city live", demo.add_city_live),
        (f"6. §8 cache experiment ({options.copies} copies)", demo.cache_experiment),
        ("7. §9 per-city access", demo.per_city_access),
        ("8. rollback", demo.rollback),
        ("9. §10 clean up", demo.clean_up),
    ]
    with _functions_log(demo.log_path):
        try:
            for name, step in steps:
                with demo._timed(name):
                    step()
            demo.summary(time.perf_counter() - started)
            if options.keep_running:
                demo.serve_until_stopped()
        finally:
            demo.stop()
    return demo.result


__all__ = ["DemoOptions", "DemoResult", "MemorySizing", "PhaseResult", "run_demo"]
