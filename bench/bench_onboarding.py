"""Benchmark onboarding on the local stack: N city CSVs dropped at once → all PUBLISHED.

A fresh local stack (free ports, ``LogLevel`` WARNING) is started in this process;
``--cities`` × ``--rows`` houses are generated (``citymodels_devkit.datagen``), then every
CSV is dropped into ``raw/{city}/`` with boto3 ``put_object`` (a pool of
``--upload-threads``). The clock runs from the first drop until every upload is
PUBLISHED, as the registry records it (the run's status and its last update time, so
the figure does not depend on how often this script polls). Targets (issue 8), by the
size asked: 100 cities × 1,000 rows (the default) in at most 15 s, 1,000 cities × 500
rows in at most 120 s; any other size has none (``target_s`` null).

Prints one JSON object to stdout:

- ``wall_s``: first drop → last run PUBLISHED (registry time); ``observed_s`` the same
  as this script saw it (polling every ``--poll`` s); ``uploads_s``: the drops alone;
- ``stages_s``: per city, p50 / p90 / max of each stage, from the registry and
  SageMaker's ``Describe*Job`` answers:
  ``drop_to_accepted`` (S3 event → EventBridge → onboard function records the run),
  ``accepted_to_processing_created``, ``processing_queued`` (waiting for a job worker),
  ``processing_run`` (in the worker: download code and CSV, ``preprocess.py``, upload),
  ``processing_to_training_created`` (state-change event → train function),
  ``training_queued``, ``training_run`` (with its ``Downloading`` / ``Training`` /
  ``Uploading`` phases), ``training_to_published`` (event → publish function: copy to
  ``mme/``, the quality gate through the endpoint, the alias);
- ``job_workers_busy``: job-worker seconds (processing + training) and that sum over
  ``job_workers × wall_s``: near 1 means the workers are never idle (compare with
  ``cpu_s``: a busy worker may only be waiting for its S3 calls);
- ``cpu_s``: CPU seconds over the run (first drop → every city serving) of each process
  of the stack, by role, with the cores each used on average: ``functions`` (this
  process: the functions, their event routing, the HTTP API, and also this script's
  drops and registry polling), ``aws`` (moto, the job service, the S3 events),
  ``endpoint``, ``job_workers`` (the aws process's spawned children, summed and each),
  ``other`` (multiprocessing's resource tracker) and ``total``;
- ``aws_requests`` (with ``--trace``; the aws process's trace, :mod:`.local.trace`):
  every request to the AWS endpoint during the run, counted and timed by operation (the
  time is the server's, from the request's arrival to its last response byte, and
  moto's own), plus the endpoint process's invocations (``InvokeEndpoint (endpoint
  process)``: the functions call it directly); and ``by_caller``: calls per city by who
  makes them (the request's User-Agent) and by API:

  - ``application``: the functions (onboard, train, publish...): these calls happen on
    AWS too, each a Lambda's wait and, for DynamoDB, capacity units;
  - ``platform``: what SageMaker itself does on AWS, done here by the local stack: the
    jobs' S3 staging (``cm-local-jobs``) and the endpoint's model loads;
  - ``local``: the local stack's own plumbing, with no counterpart on AWS: the SQS
    queues that stand for EventBridge's Lambda targets and event source mappings, and
    the endpoint's metrics (``PutMetricData``).

  With ``--baseline FILE`` (an earlier run's JSON), ``baseline_by_caller`` repeats that
  run's figures and ``change_by_caller`` the difference, by caller and API.

Until the endpoint has loaded every city's model (the quality gate's load), only the
endpoint process's counters are read, every second; then the registry is polled every
``--poll`` s (default 2 s; each poll reads every city, a Query that holds the aws
process's DynamoDB lock ~1.3 s at 1,000 cities). ``--timeout`` defaults to 600 s, or 2 s
per city when more.

Run: ``python bench/bench_onboarding.py [--cities 100] [--rows 1000] [--job-workers 2] [--function-concurrency 4]
[--trace [--baseline before.json]]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from common import CpuWindow, claim_stdout, emit, loadavg, local_options, machine

TARGETS_S = {(100, 1000): 15.0, (1000, 500): 120.0}
"""Issue 8's targets, first drop → all published, by (cities, rows)."""

BENCH_AGENT = "cm-bench-client"
"""In the User-Agent of this script's own AWS calls (traced apart, as ``bench``)."""


def spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "p50": statistics.median(ordered),
        "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "max": ordered[-1],
        "n": len(ordered),
    }


def epoch(value: Any) -> float:
    """A registry ISO time or a boto3 datetime → epoch seconds."""
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


# -- the aws process's request trace, per city ----------------------------------------------


def per_city_report(report: dict[str, Any], invocations: list[int], cities: int) -> dict[str, Any]:
    """The aws process's trace report (``LocalStack.request_trace``) per city, with the
    endpoint process's invocations (the publish function's quality gate) added as the
    application's ``InvokeEndpoint``."""
    window = report["window_s"]
    rows: dict[str, Any] = {}
    for name, row in report["operations"].items():
        rows[name] = {
            "count": row["count"],
            "per_city": row["count"] / cities,
            **{k: v for k, v in row.items() if k != "count"},
        }
    callers = {who: dict(entry) for who, entry in report["callers"].items()}
    if invocations:
        seconds = [ns / 1e9 for ns in invocations]
        rows["InvokeEndpoint (endpoint process)"] = {
            "count": len(seconds),
            "per_city": len(seconds) / cities,
            "server_s_total": sum(seconds),
            "server_ms_p50": statistics.median(seconds) * 1e3,
            "mean_in_flight": sum(seconds) / window if window else None,
        }
        app = callers.setdefault(
            "application", {"count": 0, "server_s_total": 0.0, "operations": {}}
        )
        app = callers["application"] = {**app, "operations": dict(app["operations"])}
        app["count"] += len(seconds)
        app["server_s_total"] += sum(seconds)
        app["operations"]["InvokeEndpoint"] = len(seconds)
    ordered = dict(sorted(rows.items(), key=lambda kv: -kv[1]["server_s_total"]))
    app_rows = [v for k, v in rows.items() if not k.startswith("bench: ")]
    counts = {
        (who, name): count
        for who, entry in callers.items()
        for name, count in entry["operations"].items()
    }
    result = {
        "window_s": window,
        "calls_per_city": sum(r["count"] for r in app_rows) / cities,
        "moto_calls_per_city": sum(r["count"] for r in app_rows if "moto_s_total" in r) / cities,
        "moto_handler_s_total": sum(r.get("moto_s_total", 0.0) for r in app_rows),
        "moto_own_s_total": sum(r.get("moto_own_s_total", 0.0) for r in rows.values()),
        "dynamodb_lock_wait_s_total": sum(
            r.get("moto_s_total", 0.0) - r.get("moto_own_s_total", 0.0)
            for name, r in rows.items()
            if "(DynamoDB)" in name
        ),
        "dynamodb_moto_own_s_total": sum(
            r.get("moto_own_s_total", 0.0) for name, r in rows.items() if "(DynamoDB)" in name
        ),
        "operations": ordered,
        "by_caller": by_caller(counts, cities),
    }
    for who, entry in result["by_caller"].items():
        entry["server_s_total"] = callers[who]["server_s_total"]
    bench = callers.get("bench")
    if bench is not None:
        result["bench_own"] = {"count": bench["count"], "server_s_total": bench["server_s_total"]}
    return result


def by_caller(counts: dict[tuple[str, str], int], cities: int) -> dict[str, Any]:
    """Calls per city by caller, in total and by API (the bench's own calls left out)."""
    result: dict[str, Any] = {}
    for (who, name), count in sorted(counts.items()):
        if who == "bench":
            continue
        entry = result.setdefault(who, {"calls_per_city": 0.0, "operations": {}})
        entry["calls_per_city"] += count / cities
        entry["operations"][name] = count / cities
    for entry in result.values():
        entry["operations"] = dict(sorted(entry["operations"].items(), key=lambda kv: -kv[1]))
    return result


def change_by_caller(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """After minus before, calls per city, by caller and API (what went, what came)."""
    change: dict[str, Any] = {}
    for who in sorted(set(before) | set(after)):
        old = before.get(who, {"calls_per_city": 0.0, "operations": {}})
        new = after.get(who, {"calls_per_city": 0.0, "operations": {}})
        names = set(old["operations"]) | set(new["operations"])
        change[who] = {
            "calls_per_city": new["calls_per_city"] - old["calls_per_city"],
            "operations": {
                name: new["operations"].get(name, 0.0) - old["operations"].get(name, 0.0)
                for name in sorted(names)
                if new["operations"].get(name, 0.0) != old["operations"].get(name, 0.0)
            },
        }
    return change


# -- the bench ------------------------------------------------------------------------------


def wait_all_published(
    registry: Any,
    cities: list[str],
    keys: dict[str, str],
    timeout: float,
    poll: float,
    done: Callable[[], None],
    gated: Callable[[], int],
) -> tuple[dict[str, Any], float, list[str]]:
    """Poll until every upload is final; return {city: run}, when that was seen, and the
    cities still not final when ``timeout`` ran out.

    First only ``gated()`` is asked, every second: how many models the endpoint has
    loaded (each city's quality gate loads its new model, just before its alias is
    written), until it reaches the cities or stops growing for a minute. It costs the
    aws process nothing, where a registry poll is a DynamoDB Query of every city, which
    holds moto's DynamoDB lock for ~1.3 s at 1,000 cities (measured: it took a quarter
    of that lock's time when polled every 5 s through the whole run).

    Then one registry query per poll (the cities and their aliases). The runs are read (one
    query per city) when every city serves, or, to find uploads that ended otherwise
    (rejected, failed, not published), when no city started serving for ``stall``
    seconds and no run is in flight (the ``watched-runs`` index). ``done`` is called
    once, before the first of those readings: the end of the measured window.
    """
    from citymodels.registry import FINAL, IN_PROGRESS

    deadline = time.monotonic() + timeout
    loaded, moved = 0, time.monotonic()
    while time.monotonic() < deadline:
        now_loaded = gated()
        if now_loaded >= len(cities):
            break
        if now_loaded > loaded:
            loaded, moved = now_loaded, time.monotonic()
        elif time.monotonic() - moved > 60.0:
            break
        time.sleep(1.0)
    stall = 10.0
    finals: dict[str, Any] = {}
    serving = 0
    progressed = time.monotonic()
    ended = False
    while time.monotonic() < deadline:
        now_serving = {c.city for c in registry.list_cities() if c.current}
        if len(now_serving) > serving:
            serving, progressed = len(now_serving), time.monotonic()
        everyone = len(now_serving | set(finals)) >= len(cities)
        if not everyone and time.monotonic() - progressed > stall:
            progressed = time.monotonic()
            everyone = sum(registry.count_watched(s) for s in IN_PROGRESS) == 0
        if everyone:
            if not ended:
                done()
                ended = True
            for city in cities:
                if city in finals:
                    continue
                for run in registry.list_runs(city):
                    if run.key == keys[city] and run.status in FINAL:
                        finals[city] = run
            if len(finals) == len(cities):
                return finals, time.time(), []
        time.sleep(poll)
    if not ended:
        done()
    return finals, time.time(), sorted(set(cities) - set(finals))


def describe_jobs(sagemaker: Any, runs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    jobs: dict[str, dict[str, Any]] = {}
    for city, run in runs.items():
        entry: dict[str, Any] = {}
        if run.processing_job:
            entry["processing"] = sagemaker.describe_processing_job(
                ProcessingJobName=run.processing_job
            )
        if run.training_job:
            entry["training"] = sagemaker.describe_training_job(TrainingJobName=run.training_job)
        jobs[city] = entry
    return jobs


def stage_timings(
    runs: dict[str, Any], jobs: dict[str, dict[str, Any]], dropped: dict[str, float]
) -> tuple[dict[str, Any], float]:
    stages: dict[str, list[float]] = defaultdict(list)
    busy = 0.0
    for city, run in runs.items():
        accepted = epoch(run.created_at)
        stages["drop_to_accepted"].append(accepted - dropped[city])
        processing = jobs[city].get("processing")
        training = jobs[city].get("training")
        if processing and "ProcessingStartTime" in processing:
            created = epoch(processing["CreationTime"])
            start = epoch(processing["ProcessingStartTime"])
            end = epoch(processing["ProcessingEndTime"])
            stages["accepted_to_processing_created"].append(created - accepted)
            stages["processing_queued"].append(start - created)
            stages["processing_run"].append(end - start)
            busy += end - start
            if training:
                stages["processing_to_training_created"].append(
                    epoch(training["CreationTime"]) - end
                )
        if training and "TrainingStartTime" in training:
            created = epoch(training["CreationTime"])
            start = epoch(training["TrainingStartTime"])
            end = epoch(training["TrainingEndTime"])
            stages["training_queued"].append(start - created)
            stages["training_run"].append(end - start)
            busy += end - start
            transitions = training.get("SecondaryStatusTransitions", [])
            for item in transitions:
                if item["Status"] in ("Downloading", "Training", "Uploading") and "EndTime" in item:
                    stages[f"training_run.{item['Status']}"].append(
                        epoch(item["EndTime"]) - epoch(item["StartTime"])
                    )
            if run.status == "PUBLISHED":
                stages["training_to_published"].append(epoch(run.updated_at) - end)
    return {name: spread(values) for name, values in stages.items()}, busy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cities", type=int, default=100, help="cities (default 100)")
    parser.add_argument("--rows", type=int, default=1000, help="rows per city (default 1000)")
    parser.add_argument(
        "--job-workers", type=int, default=None, help="job worker processes (default: the stack's)"
    )
    parser.add_argument(
        "--function-concurrency",
        type=int,
        default=None,
        help="execution environments per function (default: the stack's)",
    )
    parser.add_argument("--upload-threads", type=int, default=8, help="parallel drops (default 8)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="give up after (s; default max(600, 2 × cities))",
    )
    parser.add_argument(
        "--poll", type=float, default=2.0, help="registry poll period (s; default 2)"
    )
    parser.add_argument(
        "--trace", action="store_true", help="count and time every AWS request (diagnostics)"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="with --trace: an earlier run's JSON, to compare the calls per city with",
    )
    args = parser.parse_args()
    timeout = args.timeout if args.timeout is not None else max(600.0, 2.0 * args.cities)
    poll = args.poll
    target_s = TARGETS_S.get((args.cities, args.rows))
    out = claim_stdout()

    from citymodels.registry import PUBLISHED, Registry
    from citymodels_devkit.datagen import write_dataset
    from citymodels_devkit.local.stack import LocalStack

    started_at = machine()
    with tempfile.TemporaryDirectory(prefix="cm-bench-onboard-") as tmp:
        root = Path(tmp)
        began = time.perf_counter()
        data = write_dataset(root / "data", args.cities, args.rows, seed=20, noise=5_000.0)
        data_s = time.perf_counter() - began
        files = {city: root / "data" / f"{city}.csv" for city in data.cities}
        options = local_options(root / "stack")
        if args.job_workers is not None:
            options.job_workers = args.job_workers
        if args.function_concurrency is not None:
            options.function_concurrency = args.function_concurrency
        stack = LocalStack(None, options)
        begun = time.perf_counter()
        outputs = stack.start()
        startup_s = time.perf_counter() - begun
        aws_requests = None
        try:
            url = outputs["AwsEndpointUrl"]
            config = Config(
                max_pool_connections=max(10, args.upload_threads * 2),
                user_agent_extra=BENCH_AGENT,
            )
            s3, dynamodb, sagemaker = (
                boto3.client(name, endpoint_url=url, region_name="us-east-1", config=config)
                for name in ("s3", "dynamodb", "sagemaker")
            )
            registry = Registry(outputs["RegistryTable"], client=dynamodb)
            bucket = outputs["DataBucket"]
            bodies = {city: path.read_bytes() for city, path in files.items()}
            keys = {city: f"raw/{city}/houses.csv" for city in bodies}
            s3.head_bucket(Bucket=bucket)  # connections and credentials ready
            time.sleep(1.0)  # let the start-up settle (workers warm, pollers waiting)
            processes = stack.processes()
            cpu = CpuWindow(processes)
            if args.trace:
                stack.request_trace(start=True, apart={BENCH_AGENT: "bench"})
                stack.invocation_timings(start=True)
            dropped: dict[str, float] = {}
            measured: dict[str, Any] = {}

            def drop(city: str) -> None:
                s3.put_object(Bucket=bucket, Key=keys[city], Body=bodies[city])
                dropped[city] = time.time()

            def done() -> None:  # every city serves (or none is in flight): the window ends
                measured["cpu_s"] = cpu.stop()
                measured["loadavg"] = loadavg()
                if args.trace:
                    measured["trace"] = stack.request_trace()
                    measured["invocations"] = stack.invocation_timings()

            loads_before = stack.endpoint_stats().loads  # the first gates run during the drops
            cpu.start()
            first_drop = time.time()
            with ThreadPoolExecutor(args.upload_threads) as pool:
                list(pool.map(drop, list(bodies)))
            uploads_s = time.time() - first_drop
            runs, seen, missing = wait_all_published(
                registry,
                list(bodies),
                keys,
                timeout,
                poll,
                done,
                lambda: stack.endpoint_stats().loads - loads_before,
            )
            if args.trace:
                aws_requests = per_city_report(
                    measured["trace"], measured["invocations"], len(bodies)
                )
            jobs = describe_jobs(sagemaker, runs)
        finally:
            stack.stop()
    published = [r for r in runs.values() if r.status == PUBLISHED]
    not_published = {c: f"{r.status}: {r.reason}" for c, r in runs.items() if r.status != PUBLISHED}
    done_at = [epoch(r.updated_at) for r in published]
    wall_s = max(done_at) - first_drop if done_at else None
    first_published_s = min(done_at) - first_drop if done_at else None
    stages, busy = stage_timings(runs, jobs, dropped)
    workers = options.job_workers
    cpu_s = measured["cpu_s"]
    cpu_s["note"] = (
        "functions is this process: the functions, their event routing and the HTTP API, "
        "and also this script's drops and registry polling (their AWS calls are served by "
        "the aws process: aws_requests.bench_own with --trace); job_workers are the aws "
        "process's spawned children, other its resource tracker"
    )
    result = {
        "benchmark": "onboarding",
        "machine": started_at,
        "loadavg_at_end": measured["loadavg"],
        "cities": args.cities,
        "rows": args.rows,
        "job_workers": workers,
        "function_concurrency": options.function_concurrency,
        "upload_threads": args.upload_threads,
        "poll_s": poll,
        "data_generated_s": data_s,
        "stack_startup_s": startup_s,
        "processes": processes,
        "uploads_s": uploads_s,
        "wall_s": wall_s,
        "observed_s": seen - first_drop,
        "first_published_s": first_published_s,
        "cities_per_s": len(published) / wall_s if wall_s else 0.0,
        "published": len(published),
        "not_published": not_published,
        "not_final_after_timeout": missing,
        "target_s": target_s,
        "met": (
            None
            if target_s is None
            else len(published) == args.cities and wall_s is not None and wall_s <= target_s
        ),
        "stages_s": stages,
        "job_workers_busy": {
            "worker_seconds": busy,
            "utilisation": busy / (workers * wall_s) if wall_s else None,
        },
        "cpu_s": cpu_s,
        "aws_requests": aws_requests,
    }
    if args.baseline is not None and aws_requests is not None:
        baseline = json.loads(args.baseline.read_text())
        before = (baseline.get("aws_requests") or {}).get("by_caller", {})
        result["baseline"] = {
            "file": str(args.baseline),
            "machine": baseline.get("machine"),
            "calls_per_city": (baseline.get("aws_requests") or {}).get("calls_per_city"),
        }
        result["baseline_by_caller"] = before
        result["change_by_caller"] = change_by_caller(before, aws_requests["by_caller"])
    return emit(result, out)


if __name__ == "__main__":
    sys.exit(main())
