"""Benchmark onboarding on the local stack: N city CSVs dropped at once → all PUBLISHED.

A fresh local stack (free ports, ``LogLevel`` WARNING) is started in this process;
``--cities`` × ``--rows`` houses are generated (``citymodels_devkit.datagen``), then every
CSV is dropped into ``raw/{city}/`` with boto3 ``put_object`` (a pool of
``--upload-threads``). The clock runs from the first drop until every upload is
PUBLISHED, as the registry records it (the run's status and its last update time, so
the figure does not depend on how often this script polls). Target: 100 cities of
1,000 rows in at most 20 s.

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
- ``cpu_s``: CPU seconds, over the run, of this process (the stack: moto, the functions,
  the API, the endpoint, on one GIL; and this script's uploads and polling) and of the
  job workers, with the cores each used on average;
- ``aws_requests`` (with ``--trace``): every request to the AWS endpoint during the
  run, counted and timed by operation (the time is the server's, from the request's
  arrival to its last response byte); and ``by_caller``: calls per city by who makes
  them (the request's User-Agent) and by API:

  - ``application``: the functions (onboard, train, publish...): these calls happen on
    AWS too, each a Lambda's wait and, for DynamoDB, capacity units;
  - ``platform``: what SageMaker itself does on AWS, done here by the local stack: the
    jobs' S3 staging (``cm-local-jobs``) and the endpoint's model loads;
  - ``local``: the local stack's own plumbing, with no counterpart on AWS: the SQS
    queues that stand for EventBridge's Lambda targets and event source mappings, and
    the endpoint's metrics (``PutMetricData``).

  With ``--baseline FILE`` (an earlier run's JSON), ``baseline_by_caller`` repeats that
  run's figures and ``change_by_caller`` the difference, by caller and API.

Run: ``python bench/bench_onboarding.py [--cities 100] [--rows 1000] [--job-workers 2]
[--trace [--baseline before.json]]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from common import claim_stdout, emit, local_options, machine

TARGET_S = 20.0


def process_cpu_s(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process so far (Linux ``/proc``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids() -> list[int]:
    """This process's children (the job workers and their resource tracker)."""
    pids: set[int] = set()
    for children in Path("/proc/self/task").glob("*/children"):
        try:
            pids.update(int(p) for p in children.read_text().split())
        except OSError:
            continue
    return sorted(pids)


def cpu_snapshot() -> dict[str, float]:
    snapshot = {"main": process_cpu_s()}
    for pid in child_pids():
        snapshot[str(pid)] = process_cpu_s(pid)
    return snapshot


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


# -- optional tracing of the AWS endpoint (diagnostics; patches the class, not the code) --


class RequestTrace:
    """Counts and times every request the local AWS endpoint serves.

    For each operation: ``server_s``, from the request's arrival at the ASGI app to its
    last response byte; for requests moto serves, ``moto_s``, the time inside moto's
    WSGI application (on an a2wsgi worker thread). The difference is time spent waiting
    for a free WSGI thread. Requests made by this script (its boto3 clients send
    ``cm-bench-client`` in their User-Agent) are counted apart, as ``bench: ...``.
    Every request is also counted by caller (:meth:`caller`).
    """

    KEY = "_cm_bench_moto_s"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.samples: dict[str, list[tuple[float, float | None]]] = defaultdict(list)
        self.callers: dict[tuple[str, str], int] = defaultdict(int)
        self.since = time.perf_counter()

    @staticmethod
    def caller(name: str, user_agent: bytes) -> str:
        """Who made a request: ``application``, ``platform``, ``local`` or ``bench``."""
        from citymodels_devkit.local.processes import LOCAL_STACK_AGENT
        from citymodels_devkit.local.sagemaker.runner import JOBS_AGENT

        if b"cm-bench-client" in user_agent:
            return "bench"
        if JOBS_AGENT.encode() in user_agent:
            return "platform"  # SageMaker's job staging
        if LOCAL_STACK_AGENT.encode() in user_agent:
            return "platform" if name.startswith("S3 ") else "local"  # model loads: SageMaker's
        return "application"

    @staticmethod
    def operation(scope: dict[str, Any], headers: dict[bytes, bytes]) -> str:
        target = headers.get(b"x-amz-target")
        if target is not None:
            service, _, action = target.decode("latin-1").rpartition(".")
            return f"{action} ({service.split('_')[0]})"
        path: str = scope.get("path", "")
        if path.startswith("/endpoints/") and path.endswith("/invocations"):
            return "InvokeEndpoint"
        parts = [p for p in path.split("/") if p]
        s3_kind = "object" if len(parts) >= 2 else "bucket"
        query = scope.get("query_string", b"").decode("latin-1")
        suffix = "?" + query.split("=")[0].split("&")[0] if query else ""
        return f"S3 {scope.get('method')} {s3_kind}{suffix}"

    def install(self) -> None:
        from citymodels_devkit.local import aws

        original = aws.AwsApp.__call__
        original_moto = aws._MotoEnviron.__call__
        trace = self

        def timed_moto(app: Any, environ: dict[str, Any], start_response: Any) -> Any:
            started = time.perf_counter()
            try:
                return original_moto(app, environ, start_response)
            finally:
                scope = environ.get("asgi.scope")
                if scope is not None:
                    scope[trace.KEY] = time.perf_counter() - started

        async def traced(app: Any, scope: Any, receive: Any, send: Any) -> None:
            if scope.get("type") != "http":
                await original(app, scope, receive, send)
                return
            headers = dict(scope.get("headers") or [])
            name = trace.operation(scope, headers)
            if b"x-www-form-urlencoded" in headers.get(b"content-type", b""):
                body = await aws._read_body(receive)  # query protocol: Action in the body
                fields = body.decode("latin-1").split("&")
                action = next((f[7:] for f in fields if f.startswith("Action=")), "?")
                name = f"{action} (query)"
                receive = aws._replay(body, receive)
            who = trace.caller(name, headers.get(b"user-agent", b""))
            with trace.lock:
                trace.callers[(who, name)] += 1
            if who == "bench":
                name = f"bench: {name}"
            started = time.perf_counter()
            try:
                await original(app, scope, receive, send)
            finally:
                elapsed = time.perf_counter() - started
                with trace.lock:
                    trace.samples[name].append((elapsed, scope.get(trace.KEY)))

        aws.AwsApp.__call__ = traced  # type: ignore[method-assign]
        aws._MotoEnviron.__call__ = timed_moto  # type: ignore[method-assign]

    def reset(self) -> None:
        with self.lock:
            self.samples.clear()
            self.callers.clear()
            self.since = time.perf_counter()

    def report(self, cities: int) -> dict[str, Any]:
        with self.lock:
            items = {k: list(v) for k, v in self.samples.items()}
            callers = dict(self.callers)
            window = time.perf_counter() - self.since
        rows: dict[str, Any] = {}
        for name, values in items.items():
            server = [v[0] for v in values]
            moto = [v[1] for v in values if v[1] is not None]
            rows[name] = {
                "count": len(values),
                "per_city": len(values) / cities,
                "server_s_total": sum(server),
                "server_ms_p50": statistics.median(server) * 1e3,
                "mean_in_flight": sum(server) / window,
            }
            if moto:
                rows[name]["moto_ms_p50"] = statistics.median(moto) * 1e3
                rows[name]["moto_s_total"] = sum(moto)
        ordered = dict(sorted(rows.items(), key=lambda kv: -kv[1]["server_s_total"]))
        app_rows = [v for k, v in rows.items() if not k.startswith("bench: ")]
        return {
            "window_s": window,
            "calls_per_city": sum(r["count"] for r in app_rows) / cities,
            "moto_calls_per_city": sum(r["count"] for r in app_rows if "moto_s_total" in r)
            / cities,
            "moto_handler_s_total": sum(r.get("moto_s_total", 0.0) for r in app_rows),
            "operations": ordered,
            "by_caller": by_caller(callers, cities),
        }


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
    registry: Any, cities: list[str], keys: dict[str, str], timeout: float, poll: float
) -> tuple[dict[str, Any], float, list[str]]:
    """Poll until every upload is final; return {city: run}, when that was seen, and the
    cities still not final when ``timeout`` ran out.

    One registry query per poll (the cities and their aliases). The runs are read when
    every city serves, or, to find uploads that ended otherwise (rejected, failed, not
    published), when no city started serving for ``stall`` seconds.
    """
    from citymodels.registry import FINAL

    deadline = time.monotonic() + timeout
    stall = 10.0
    finals: dict[str, Any] = {}
    serving = 0
    progressed = time.monotonic()
    while time.monotonic() < deadline:
        now_serving = {c.city for c in registry.list_cities() if c.current}
        if len(now_serving) > serving:
            serving, progressed = len(now_serving), time.monotonic()
        if len(now_serving | set(finals)) >= len(cities) or (time.monotonic() - progressed > stall):
            progressed = time.monotonic()
            for city in cities:
                if city in finals:
                    continue
                for run in registry.list_runs(city):
                    if run.key == keys[city] and run.status in FINAL:
                        finals[city] = run
            if len(finals) == len(cities):
                return finals, time.time(), []
        time.sleep(poll)
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
    parser.add_argument("--upload-threads", type=int, default=8, help="parallel drops (default 8)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after (s)")
    parser.add_argument("--poll", type=float, default=2.0, help="registry poll period (s)")
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
    out = claim_stdout()

    from citymodels.registry import PUBLISHED, Registry
    from citymodels_devkit.datagen import write_dataset
    from citymodels_devkit.local.stack import LocalStack

    trace = RequestTrace() if args.trace else None
    if trace is not None:
        trace.install()
    started_at = machine()
    with tempfile.TemporaryDirectory(prefix="cm-bench-onboard-") as tmp:
        root = Path(tmp)
        data = write_dataset(root / "data", args.cities, args.rows, seed=20, noise=5_000.0)
        files = {city: root / "data" / f"{city}.csv" for city in data.cities}
        options = local_options(root / "stack")
        if args.job_workers is not None:
            options.job_workers = args.job_workers
        stack = LocalStack(None, options)
        begun = time.perf_counter()
        outputs = stack.start()
        startup_s = time.perf_counter() - begun
        try:
            url = outputs["AwsEndpointUrl"]
            config = Config(
                max_pool_connections=max(10, args.upload_threads * 2),
                user_agent_extra="cm-bench-client",
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
            if trace is not None:
                trace.reset()
            dropped: dict[str, float] = {}

            def drop(city: str) -> None:
                s3.put_object(Bucket=bucket, Key=keys[city], Body=bodies[city])
                dropped[city] = time.time()

            cpu_before = cpu_snapshot()
            first_drop = time.time()
            with ThreadPoolExecutor(args.upload_threads) as pool:
                list(pool.map(drop, list(bodies)))
            uploads_s = time.time() - first_drop
            runs, seen, missing = wait_all_published(
                registry, list(bodies), keys, args.timeout, args.poll
            )
            cpu_after = cpu_snapshot()
            aws_requests = trace.report(len(bodies)) if trace is not None else None
            jobs = describe_jobs(sagemaker, runs)
        finally:
            stack.stop()
    published = [r for r in runs.values() if r.status == PUBLISHED]
    not_published = {c: f"{r.status}: {r.reason}" for c, r in runs.items() if r.status != PUBLISHED}
    done = [epoch(r.updated_at) for r in published]
    wall_s = max(done) - first_drop if done else None
    first_published_s = min(done) - first_drop if done else None
    stages, busy = stage_timings(runs, jobs, dropped)
    window = seen - first_drop
    workers_cpu = sum(
        cpu_after[pid] - cpu_before.get(pid, 0.0) for pid in cpu_after if pid != "main"
    )
    main_cpu = cpu_after["main"] - cpu_before["main"]
    workers = options.job_workers
    result = {
        "benchmark": "onboarding",
        "machine": started_at,
        "cities": args.cities,
        "rows": args.rows,
        "job_workers": workers,
        "function_concurrency": options.function_concurrency,
        "upload_threads": args.upload_threads,
        "stack_startup_s": startup_s,
        "uploads_s": uploads_s,
        "wall_s": wall_s,
        "observed_s": seen - first_drop,
        "first_published_s": first_published_s,
        "cities_per_s": len(published) / wall_s if wall_s else 0.0,
        "published": len(published),
        "not_published": not_published,
        "not_final_after_timeout": missing,
        "target_s": TARGET_S,
        "met": len(published) == args.cities and wall_s is not None and wall_s <= TARGET_S,
        "stages_s": stages,
        "job_workers_busy": {
            "worker_seconds": busy,
            "utilisation": busy / (workers * wall_s) if wall_s else None,
        },
        "cpu_s": {
            "window_s": window,
            "stack_process": main_cpu,
            "stack_process_cores": main_cpu / window,
            "job_workers": workers_cpu,
            "job_workers_cores": workers_cpu / window,
            "note": "this process runs moto, the functions, the API and the endpoint "
            "(one GIL); the job workers are its children",
        },
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
