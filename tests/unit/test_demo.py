"""``citymodels demo`` and ``citymodels metrics``: the MME metrics read back from
CloudWatch, the notebook's charts, and the demo on the local stack.

Metrics are published here in the shapes the local endpoint publishes them
(``MultiModelEndpoint.drain_metrics``: gauges, and statistic sets of the per-invocation
metrics), to moto's CloudWatch, and read back by the code that reads AWS's.
"""

from __future__ import annotations

import io
import json
import socket
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import boto3
import pytest
from moto import mock_aws
from rich.console import Console

from citymodels_devkit import cli, demo, metrics, plots
from citymodels_devkit.demo import DemoOptions, MemorySizing, run_demo
from citymodels_devkit.local.mme import metrics as mme
from citymodels_devkit.operations import OperationFailed
from tests.aws import REGION

ENDPOINT = "cm-endpoint"
VARIANT = "AllTraffic"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def cloudwatch(aws_credentials: None) -> Any:
    with mock_aws():
        yield boto3.client("cloudwatch", region_name=REGION)


def _dimensions(endpoint: str = ENDPOINT) -> list[dict[str, str]]:
    return [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": VARIANT}]


def publish_second(
    cloudwatch: Any,
    when: datetime,
    *,
    loaded: int,
    memory: float,
    hits: int = 0,
    misses: int = 0,
    endpoint: str = ENDPOINT,
) -> None:
    """Publish one second of an endpoint's metrics, as the local endpoint does."""
    cloudwatch.put_metric_data(
        Namespace=metrics.ENDPOINTS_NAMESPACE,
        MetricData=[
            {"MetricName": name, "Dimensions": _dimensions(endpoint), "Timestamp": when,
             "Value": value, "Unit": unit}
            for name, value, unit in (("LoadedModelCount", float(loaded), "None"),
                                      ("MemoryUtilization", memory, "Percent"))
        ],
    )  # fmt: skip
    calls = hits + misses
    if not calls:
        return
    sets = [
        ("Invocations", "None", {"SampleCount": calls, "Sum": calls, "Minimum": 1, "Maximum": 1}),
        ("ModelCacheHit", "None", {"SampleCount": calls, "Sum": hits,
                                   "Minimum": 0 if misses else 1, "Maximum": 1 if hits else 0}),
    ]  # fmt: skip
    if misses:
        sets.append(("ModelLoadingTime", "Microseconds",
                     {"SampleCount": misses, "Sum": 900.0 * misses, "Minimum": 800, "Maximum": 1000}))  # fmt: skip
    cloudwatch.put_metric_data(
        Namespace=metrics.SAGEMAKER_NAMESPACE,
        MetricData=[
            {"MetricName": name, "Dimensions": _dimensions(endpoint), "Timestamp": when,
             "StatisticValues": {k: float(v) for k, v in values.items()}, "Unit": unit}
            for name, unit, values in sets
        ],
    )  # fmt: skip


def whole_second(seconds_ago: int) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=seconds_ago)


# -- metrics.py ------------------------------------------------------------------------


def test_the_namespaces_are_those_the_local_endpoint_publishes() -> None:
    assert metrics.SAGEMAKER_NAMESPACE == mme.SAGEMAKER_NAMESPACE
    assert metrics.ENDPOINTS_NAMESPACE == mme.ENDPOINTS_NAMESPACE
    assert metrics.default_period(local=True) == 1
    assert metrics.default_period(local=False) == 60


def test_endpoint_metrics_are_read_back_per_second(cloudwatch: Any) -> None:
    # GIVEN three seconds of an endpoint's life, published mid-second, and another endpoint
    base = whole_second(30)
    for i, (loaded, hits, misses) in enumerate([(10, 0, 0), (15, 0, 5), (15, 5, 0)]):
        publish_second(cloudwatch, base + timedelta(seconds=i, milliseconds=400),
                       loaded=loaded, memory=6.25 + loaded / 2, hits=hits, misses=misses)  # fmt: skip
    publish_second(cloudwatch, base, loaded=99, memory=99.0, hits=7, endpoint="other")
    # WHEN they are read back at a period of 1 s
    read = metrics.read_endpoint_metrics(
        cloudwatch, ENDPOINT, start=base - timedelta(seconds=2), end=base + timedelta(seconds=5),
        period=1,
    )  # fmt: skip
    # THEN each datapoint is one whole second, and only this endpoint's
    loaded = read["LoadedModelCount"]
    assert loaded.timestamps == [base + timedelta(seconds=i) for i in range(3)]
    assert loaded.values("Maximum") == [10.0, 15.0, 15.0]
    assert read["MemoryUtilization"].maximum() == pytest.approx(13.75)
    assert read["ModelCacheHit"].values("Average") == [0.0, 1.0]
    assert read["ModelLoadingTime"].total("SampleCount") == 5
    assert read.cache_hit_ratio() == pytest.approx(0.5)
    assert not read.empty
    assert read.to_dict()["series"]["LoadedModelCount"]["Maximum"] == [10.0, 15.0, 15.0]


def test_a_window_totals_only_its_own_seconds(cloudwatch: Any) -> None:
    base = whole_second(20)
    publish_second(cloudwatch, base + timedelta(milliseconds=900), loaded=5, memory=7.0, misses=4)
    publish_second(cloudwatch, base + timedelta(seconds=2, milliseconds=100), loaded=5,
                   memory=7.0, hits=6)  # fmt: skip
    query = metrics.MetricQuery(metrics.SAGEMAKER_NAMESPACE, "ModelCacheHit", ("Sum",))
    first = metrics.window_statistics(
        cloudwatch, ENDPOINT, query, start=base, end=base + timedelta(seconds=2)
    )
    second = metrics.window_statistics(
        cloudwatch, ENDPOINT, query, start=base + timedelta(seconds=2),
        end=base + timedelta(seconds=4),
    )  # fmt: skip
    assert (first.ratio(), first.values["SampleCount"]) == (0.0, 4.0)
    assert (second.ratio(), second.values["SampleCount"]) == (1.0, 6.0)


class _PagingCloudWatch:
    """Answers GetMetricData with one datapoint per call, over two pages."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def get_metric_data(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        page = 2 if kwargs.get("NextToken") else 1
        stamp = kwargs["StartTime"] + timedelta(seconds=page - 1)
        results = [
            {"Id": q["Id"], "Timestamps": [stamp], "Values": [float(page)]}
            for q in kwargs["MetricDataQueries"]
        ]
        return {"MetricDataResults": results, **({"NextToken": "more"} if page == 1 else {})}


def test_long_ranges_are_read_in_chunks_and_every_page() -> None:
    client = _PagingCloudWatch()
    start = datetime(2026, 11, 25, 1, 0, 0, 300_000, tzinfo=UTC)
    query = metrics.MetricQuery(metrics.ENDPOINTS_NAMESPACE, "LoadedModelCount", ("Maximum",))
    read = metrics.read_endpoint_metrics(
        client, ENDPOINT, start=start, end=start + timedelta(seconds=150), period=1,
        metrics=[query],
    )  # fmt: skip
    starts = [call["StartTime"] for call in client.calls if "NextToken" not in call]
    # the range is widened to whole periods, and read 60 periods at a time
    assert starts == [datetime(2026, 11, 25, 1, 0, s, tzinfo=UTC) for s in (0,)] + [
        datetime(2026, 11, 25, 1, m, s, tzinfo=UTC) for m, s in ((1, 0), (2, 0))
    ]
    assert len(client.calls) == 6  # two pages each
    assert len(read["LoadedModelCount"]) == 6


def test_reading_refuses_a_bad_period_or_range(cloudwatch: Any) -> None:
    now = datetime.now(UTC)
    with pytest.raises(ValueError, match="period"):
        metrics.read_endpoint_metrics(cloudwatch, ENDPOINT, start=now, end=now, period=0)
    with pytest.raises(ValueError, match="empty"):
        metrics.read_endpoint_metrics(cloudwatch, ENDPOINT, start=now, end=now, period=1)


# -- plots.py --------------------------------------------------------------------------


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_notebooks_two_charts_are_written(cloudwatch: Any, tmp_path: Path) -> None:
    base = whole_second(40)
    for i in range(12):
        loaded = min(10 + 4 * i, 30)
        publish_second(cloudwatch, base + timedelta(seconds=i, milliseconds=500), loaded=loaded,
                       memory=6.25 + loaded, hits=i if i > 6 else 0, misses=0 if i > 6 else 4)  # fmt: skip
    read = metrics.read_endpoint_metrics(
        cloudwatch, ENDPOINT, start=base, end=base + timedelta(seconds=13), period=1
    )
    phases = [
        plots.Phase("a. first", base, base + timedelta(seconds=7), "hit ratio 0.00"),
        plots.Phase("b. again", base + timedelta(seconds=7), base + timedelta(seconds=12)),
    ]
    charts = plots.write_charts(read, tmp_path / "charts", phases=phases, model_capacity=30)
    assert [p.name for p in charts] == [plots.MODELS_MEMORY_CHART, plots.CACHE_HIT_CHART]
    (width, height), (_, taller) = (png_size(p) for p in charts)
    assert width >= 1000 and taller > height  # the second adds the ModelCacheHit panel


def test_no_datapoint_no_chart(cloudwatch: Any, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    read = metrics.read_endpoint_metrics(
        cloudwatch, ENDPOINT, start=now - timedelta(minutes=1), end=now, period=1
    )
    assert read.empty
    with pytest.raises(ValueError, match="no metrics for endpoint cm-endpoint"):
        plots.write_charts(read, tmp_path)
    assert not list(tmp_path.iterdir())


# -- citymodels metrics ----------------------------------------------------------------


def write_outputs(path: Path) -> Path:
    path.write_text(json.dumps({
        "DataBucket": "b", "ApiUrl": "http://127.0.0.1:9/v1/", "EndpointName": ENDPOINT,
        "RegistryTable": "t",
    }))  # fmt: skip
    return path


def test_metrics_command_prints_the_series_and_writes_the_charts(
    cloudwatch: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = whole_second(90)
    for i in range(3):
        publish_second(cloudwatch, base + timedelta(seconds=i), loaded=3 + i, memory=10.0,
                       hits=1, misses=1)  # fmt: skip
    outputs = write_outputs(tmp_path / "outputs.json")
    code = cli.main(["metrics", "--outputs", str(outputs), "--period", "1", "--since", "5",
                     "--out", str(tmp_path / "charts"), "--json"])  # fmt: skip
    assert code == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["endpoint_name"] == ENDPOINT and answer["period"] == 1
    assert answer["series"]["LoadedModelCount"]["Maximum"] == [3.0, 4.0, 5.0]
    assert answer["cache_hit_ratio"] == pytest.approx(0.5)
    assert all(Path(p).exists() for p in answer["charts"])
    # and as a table for a person, at AWS's default period
    assert cli.main(["metrics", "--outputs", str(outputs), "--out", str(tmp_path / "c2")]) == 0
    out = capsys.readouterr().out
    assert "period 60 s" in out and "LoadedModelCount" in out and "ModelCountMemUtilization" in out
    # by default the range starts at the first datapoint: a young stack fills the chart
    assert cli.main(["metrics", "--outputs", str(outputs), "--period", "1", "--json",
                     "--out", str(tmp_path / "c3")]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["start"].startswith(
        base.strftime("%Y-%m-%dT%H:%M:%S")
    )
    # and a variant with no metrics is named, with those that have some
    code = cli.main(["metrics", "--outputs", str(outputs), "--variant", "Nope",
                     "--out", str(tmp_path / "c4")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "no metrics for variant 'Nope'" in err and "AllTraffic" in err
    assert "--since" not in err


def test_metrics_command_without_metrics_is_one_line(
    cloudwatch: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = write_outputs(tmp_path / "outputs.json")
    code = cli.main(["metrics", "--outputs", str(outputs), "--out", str(tmp_path / "charts")])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("citymodels metrics: error: no metrics for endpoint cm-endpoint")
    assert "\n" not in err


# -- the demo --------------------------------------------------------------------------


@pytest.mark.parametrize("copies", [4, 5, 20, 200, 1000])
def test_the_cache_experiment_evicts_yet_phase_b_fits(copies: int) -> None:
    sizing = MemorySizing.for_copies(copies)
    # phase b re-invokes the first half: it must fit, while all copies must not
    assert copies // 2 < sizing.fit < copies
    assert sizing.fit * sizing.model_overhead_mb <= sizing.max_memory_mb
    assert (sizing.fit + 1) * sizing.model_overhead_mb > sizing.max_memory_mb
    assert 75 < sizing.full_utilization < 85  # the notebook's ~79 %


def test_the_notebooks_200_copies_keep_120_models() -> None:
    sizing = MemorySizing.for_copies(200)
    assert (sizing.fit, sizing.model_overhead_mb) == (120, 100.0)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("--cities", "1", "--cities must be at least 2"), ("--copies", "3", "--copies must be")],
)
def test_demo_refuses_options_it_cannot_run(
    option: str, value: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["demo", option, value, "--work-dir", str(tmp_path / "demo")])
    assert code == 2
    assert capsys.readouterr().err.startswith(f"citymodels demo: error: {message}")
    assert not (tmp_path / "demo").exists()


class _FakeLocalStack:
    """Stands for LocalStack: starts instantly, remembers being stopped."""

    instances: ClassVar[list[_FakeLocalStack]] = []

    def __init__(self, template: object, options: object) -> None:
        self.stopped = False
        _FakeLocalStack.instances.append(self)

    def start(self) -> dict[str, str]:
        return {
            "DataBucket": "b", "ApiUrl": "http://127.0.0.1:9/v1/", "EndpointName": "e",
            "RegistryTable": "t", "AwsEndpointUrl": "http://127.0.0.1:9", "AdminApiKey": "k",
        }  # fmt: skip

    def stop(self) -> None:
        self.stopped = True


def test_the_demo_prints_its_outputs_whole_on_a_narrow_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from citymodels_devkit.local import stack as local_stack

    monkeypatch.setattr(local_stack, "LocalStack", _FakeLocalStack)
    output = io.StringIO()
    d = demo.Demo(DemoOptions(work_dir=tmp_path / "demo", cities=2), Console(file=output, width=30))
    d.start_stack()
    # the URLs, to copy into a client, are never folded mid-word
    lines = output.getvalue().splitlines()
    assert any(line.endswith("http://127.0.0.1:9/v1/") for line in lines)
    assert any(line.endswith("http://127.0.0.1:9") and "AwsEndpointUrl" in line for line in lines)


@pytest.mark.parametrize("error", [OperationFailed("boom"), KeyboardInterrupt()])
def test_the_demo_never_leaves_a_stack_running(
    error: BaseException, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a step that fails (or Ctrl-C) after the stack has started
    from citymodels_devkit.local import stack as local_stack

    _FakeLocalStack.instances.clear()
    monkeypatch.setattr(local_stack, "LocalStack", _FakeLocalStack)

    def fail(self: demo.Demo) -> None:
        raise error

    monkeypatch.setattr(demo.Demo, "publish_cities", fail)
    options = DemoOptions(work_dir=tmp_path / "demo", cities=2, rows=100)
    # WHEN the demo runs THEN the error propagates, the stack is stopped, and the outputs
    # file, which describes a running stack, is gone
    with pytest.raises(type(error)):
        run_demo(options, console=Console(file=io.StringIO()))
    assert [s.stopped for s in _FakeLocalStack.instances] == [True]
    assert not (tmp_path / "demo" / "outputs.json").exists()
    assert (tmp_path / "demo" / "data" / "NewYork_NY.csv").exists()


def _port_open(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((parts.hostname or "", parts.port or 0)) == 0


@pytest.mark.slow
def test_a_small_demo_runs_end_to_end_on_the_local_stack(tmp_path: Path) -> None:
    # GIVEN 3 cities (2 at once, 1 live) and 20 model copies, of which 12 fit in memory
    output = io.StringIO()
    options = DemoOptions(work_dir=tmp_path / "demo", cities=3, copies=20)
    # WHEN the demo runs
    result = run_demo(options, console=Console(file=output, width=110))
    text = output.getvalue()
    # THEN every city was published, and priced close to its true price
    assert set(result.published) == {"NewYork_NY", "LosAngeles_CA", "Chicago_IL"}
    for city, priced in result.predictions.items():
        assert abs(priced["price"] - priced["true"]) < 0.02 * priced["true"], city
    # the cache experiment: cold, then all hits, then half; memory full at 12 models
    a, b, c = result.phases
    assert (a.hit_ratio, b.hit_ratio, c.hit_ratio) == (0.0, 1.0, 0.5)
    assert (a.invocations, b.invocations, c.invocations) == (10, 10, 20)
    assert c.unloads > 0
    assert result.peak_loaded_models == MemorySizing.for_copies(20).fit
    assert [p.name for p in result.charts] == [plots.MODELS_MEMORY_CHART, plots.CACHE_HIT_CHART]
    assert all(png_size(p)[0] >= 1000 for p in result.charts)
    # a key for one city: allowed there, 403 elsewhere; then a rollback answers with v1
    assert result.access == {"NewYork_NY": 200, "Chicago_IL": 403}
    assert result.rollback["after"] == result.rollback["v1"] != result.rollback["v2"]
    # every step is reported, the stack is stopped, and what functions print is in a log
    for number in range(1, 10):
        assert f"\n{number}. " in text
    assert '"sagemaker:TargetModel"' in text and "sam delete" in text
    assert [name.split(".")[0] for name, _ in result.timings] == [str(n) for n in range(1, 10)]
    assert not _port_open(result.outputs["ApiUrl"])
    assert not (tmp_path / "demo" / "outputs.json").exists()
    assert (tmp_path / "demo" / "functions.log").stat().st_size > 0
