"""Benchmark the local stack's multi-model endpoint over HTTP, against Seldon MLServer 1.7.

A fresh local stack runs in this process with ``--models`` published-like models: one
generated city each (``citymodels_devkit.datagen``, 10 encoded features), trained with
the local Linear Learner and the template's hyperparameters, the artifact put straight
into ``mme/{city}/{version}.tar.gz`` as the publish function does. The client is httpx
with ONE persistent connection, sequential, in a process of its own (as any user of
the endpoint is), sending unsigned raw HTTP:

- ours: ``POST /endpoints/{EndpointName}/invocations`` on the endpoint's own process
  (where the functions send it; ``AwsEndpointUrl`` forwards the same request there) with
  ``X-Amzn-SageMaker-Target-Model: {city}/{version}.tar.gz``, ``Content-Type: text/csv``
  and one raw row (the inference pipeline: preprocessor, then the city's model);
- the peer: MLServer serving the SAME models as scikit-learn ``LinearRegression`` fitted
  on the same rows (``bench/peers``), one ``model-settings.json`` per model, from its
  own virtualenv ``.venv-bench``: ``POST /v2/models/{city}/infer`` with a one-row FP64
  tensor of the 10 encoded features (V2 inference protocol).

Measured: ``cold_ms`` = the first call of each fresh model of ours (download from S3,
load, first answer); then warm calls, round robin over every model, in blocks that
alternate between ours and the peer so that both see the same machine: p50 / p99 in
microseconds and requests per second; ``errors``: calls of ours not answered 200 (the
client counts them and goes on). ``stack_memory_mb``: the resident memory (RSS, and
PSS from ``/proc/PID/smaps_rollup``) of every process of the stack (functions, which
is this process and so also holds this script's models; aws; endpoint; the job
workers) before the first call and after the cold loads and the warm calls, and their
sum; ``peak_sum_mb`` the largest sum sampled every second meanwhile. ``cpu_s``: each
process's CPU seconds while the client ran.

Targets (issue 8 and the README's): ours warm p50 ≤ 0.5 ms inside the stack
(``warm_server_us``), ≤ 1 ms as the client sees it, cold p50 ≤ 10 ms, ours ≥ 3.5 ×
MLServer's warm requests/s; at 10,000 models, 0 errors and the whole stack's resident
memory ≤ 1 GiB (the PSS sum where readable, else RSS). Without ``.venv-bench`` the peer
is skipped: ``"mlserver": null`` and ``mlserver_unavailable`` says why.

Training one model takes ~37 ms here, so ``--trained`` (default: at most 200) distinct
models are trained and a model ``i`` past them is a copy of model ``i mod trained``
under its own name: every TargetModel is still its own S3 object, downloaded, loaded
and kept by the endpoint; only the weights repeat (``models_trained`` says so). The
MLServer peer needs one fit per model: it runs only when every model was trained.

Prints one JSON object to stdout. Run:
``python bench/bench_endpoint.py [--models 200] [--trained N] [--warm-calls 10000]
[--no-peer]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import (
    CpuWindow,
    claim_stdout,
    emit,
    loadavg,
    local_options,
    machine,
    percentiles,
    run_client,
    stack_memory,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
HOUSE = {
    "YEAR_BUILT": 1995, "SQUARE_FEET": 2500, "NUM_BEDROOMS": 3, "NUM_BATHROOMS": 2.5,
    "LOT_ACRES": 1.0, "GARAGE_SPACES": 2, "FRONT_PORCH": "y", "DECK": "n",
}  # fmt: skip
CSV_ROW = b"1995,2500,3,2.5,1.0,2,y,n\n"
VERSION = "20261125T000000000Z-0000000000000000000000000000BE7C"
TARGETS = {
    "warm_server_p50_ms": 0.5,
    "warm_p50_ms": 1.0,
    "cold_p50_ms": 10.0,
    "ratio_to_mlserver": 3.5,
    "stack_memory_mib_at_10000_models": 1024.0,
    "errors": 0,
}
MAX_ERRORS_KEPT = 5


# -- the models -------------------------------------------------------------------------


def make_models(count: int, rows: int, seed: int, trained: int | None = None) -> dict[str, Any]:
    """``count`` cities: encoded features, prices, the Linear Learner artifact of each.

    Only the first ``trained`` (default: all) are generated and trained; city ``i``
    past them gets the artifact of city ``i mod trained`` (its name is its own)."""
    import numpy as np

    from citymodels.schema import FEATURES, encode_values
    from citymodels_devkit.datagen import city_names, generate, true_price
    from citymodels_devkit.linear_learner import fit

    trained = count if trained is None else max(1, min(trained, count))
    hyperparameters = template_hyperparameters()
    names, xs, ys, artifacts = [], [], [], []
    truth0 = None
    for index, (city, table, truth) in enumerate(generate(trained, rows, seed=seed, noise=5_000.0)):
        columns = table.columns()
        raw = zip(*(columns[name].tolist() for name in FEATURES), strict=True)
        x = np.array([encode_values(list(values)) for values in raw], dtype=float)
        y = np.asarray(columns["PRICE"], dtype=float)
        model, _ = fit(x, y, None, None, hyperparameters, seed=index)
        names.append(city)
        xs.append(x)
        ys.append(y)
        artifacts.append(model.to_artifact_bytes())
        if index == 0:
            truth0 = truth
    all_names = city_names(count)
    assert all_names[:trained] == names  # generate() names its cities so
    for index in range(trained, count):
        names.append(all_names[index])
        artifacts.append(artifacts[index % trained])
    house_columns = {name: np.array([value]) for name, value in HOUSE.items()}
    return {
        "names": names,
        "x": np.stack(xs),
        "y": np.stack(ys),
        "artifacts": artifacts,
        "trained": trained,
        "hyperparameters": hyperparameters,
        "house_encoded": encode_values([HOUSE[name] for name in FEATURES]),
        "true_price_model_0": float(true_price(truth0, house_columns)[0]) if truth0 else None,
    }


def template_hyperparameters() -> dict[str, str]:
    """The Linear Learner hyperparameters the template's defaults give."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    template = yaml.load((REPO_ROOT / "template.yaml").read_text(), Loader=Loader)
    parameters = template["Parameters"]

    def default(name: str, fallback: str) -> str:
        return str(parameters.get(name, {}).get("Default", fallback))

    return {
        "feature_dim": "10",
        "predictor_type": "regressor",
        "mini_batch_size": default("LinearLearnerMiniBatchSize", "100"),
        "epochs": default("LinearLearnerEpochs", "10"),
        "num_models": default("LinearLearnerNumModels", "32"),
        "loss": default("LinearLearnerLoss", "absolute_loss"),
    }


# -- the client (its own process) -------------------------------------------------------


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    import httpx

    clock = time.perf_counter_ns
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    ours_url = spec["ours"]["url"]
    ours_targets: list[str] = spec["ours"]["targets"]
    ours_headers = [
        {"X-Amzn-SageMaker-Target-Model": t, "Content-Type": "text/csv"} for t in ours_targets
    ]
    body = spec["ours"]["body"]
    result: dict[str, Any] = {}
    errors: dict[str, Any] = {"cold": 0, "load": 0, "warm": 0, "examples": []}
    result["errors"] = errors

    def ours_post(headers: dict[str, str], phase: str) -> Any:
        """One call of ours; a failure is counted (and a few kept), never raised."""
        try:
            answer = ours.post(ours_url, content=body, headers=headers)
        except httpx.HTTPError as error:
            what = f"{type(error).__name__}: {error}"
        else:
            if answer.status_code == 200:
                return answer
            what = f"{answer.status_code} {answer.text[:300]}"
        errors[phase] += 1
        if len(errors["examples"]) < MAX_ERRORS_KEPT:
            errors["examples"].append(f"{phase} {headers['X-Amzn-SageMaker-Target-Model']}: {what}")
        return None

    ours = httpx.Client(limits=limits, timeout=60.0)
    peer = httpx.Client(limits=limits, timeout=60.0) if spec.get("peer") else None
    try:
        # Cold: the first call of each fresh model.
        cold: list[int] = []
        first: Any = None
        for headers in ours_headers[: spec["cold_models"]]:
            started = clock()
            answer = ours_post(headers, "cold")
            cold.append(clock() - started)
            if first is None and answer is not None:
                first = answer.json()
        result["ours_cold_ns"] = cold
        result["ours_first_answer"] = first
        for headers in ours_headers[spec["cold_models"] :]:  # load the rest, untimed
            ours_post(headers, "load")

        def ours_block(count: int, offset: int) -> list[int]:
            samples = []
            n = len(ours_headers)
            for i in range(offset, offset + count):
                started = clock()
                ours_post(ours_headers[i % n], "warm")
                samples.append(clock() - started)
            return samples

        peer_block = None
        if peer is not None:
            peer_urls = spec["peer"]["urls"]
            payload = spec["peer"]["payload"]
            peer_headers = {"Content-Type": "application/json"}
            first_peer: list[int] = []
            for url in peer_urls:  # every model's first call (models load at start-up)
                started = clock()
                answer = peer.post(url, content=payload, headers=peer_headers)
                first_peer.append(clock() - started)
                if answer.status_code != 200:
                    raise RuntimeError(f"mlserver: {answer.status_code} {answer.text[:300]}")
                if "peer_first_answer" not in result:
                    result["peer_first_answer"] = answer.json()
            result["peer_first_call_ns"] = first_peer

            def peer_block(count: int, offset: int) -> list[int]:
                samples = []
                post = peer.post
                n = len(peer_urls)
                for i in range(offset, offset + count):
                    started = clock()
                    answer = post(peer_urls[i % n], content=payload, headers=peer_headers)
                    samples.append(clock() - started)
                    if answer.status_code != 200:
                        raise RuntimeError(f"mlserver: {answer.status_code} {answer.text[:200]}")
                return samples

        warmup = spec["warmup"]
        ours_block(warmup, 0)
        if peer_block is not None:
            peer_block(warmup, 0)
        rounds, calls = spec["rounds"], spec["warm_calls"]
        per_round = max(1, calls // rounds)
        warm: dict[str, list[int]] = {"ours": [], "peer": []}
        elapsed: dict[str, int] = {"ours": 0, "peer": 0}
        for r in range(rounds):
            started = clock()
            warm["ours"] += ours_block(per_round, r * per_round)
            elapsed["ours"] += clock() - started
            if peer_block is not None:
                started = clock()
                warm["peer"] += peer_block(per_round, r * per_round)
                elapsed["peer"] += clock() - started
        result["warm_ns"] = warm
        result["elapsed_ns"] = elapsed
    finally:
        ours.close()
        if peer is not None:
            peer.close()
    return result


def model_load_metrics(url: str, endpoint: str, since: float) -> dict[str, Any]:
    """The endpoint's own MME metrics for the cold calls, from CloudWatch (mean, max ms).

    ``ModelDownloadingTime`` (S3 → disk), ``ModelLoadingTime`` (disk → memory),
    ``ModelLoadingWaitTime`` (how long the cold request waited for both).
    """
    from datetime import UTC, datetime, timedelta

    import boto3

    time.sleep(2.5)  # the local stack publishes its metrics every second
    cloudwatch = boto3.client("cloudwatch", endpoint_url=url, region_name="us-east-1")
    metrics: dict[str, Any] = {}
    for name in ("ModelDownloadingTime", "ModelLoadingTime", "ModelLoadingWaitTime"):
        answer = cloudwatch.get_metric_statistics(
            Namespace="AWS/SageMaker",
            MetricName=name,
            Dimensions=[
                {"Name": "EndpointName", "Value": endpoint},
                {"Name": "VariantName", "Value": "AllTraffic"},
            ],
            StartTime=datetime.fromtimestamp(since, UTC),
            EndTime=datetime.now(UTC) + timedelta(minutes=1),
            Period=3600,
            Statistics=["Sum", "SampleCount", "Maximum"],
        )
        points = answer["Datapoints"]
        count = sum(p["SampleCount"] for p in points)
        metrics[name] = {
            "mean": sum(p["Sum"] for p in points) / count / 1e3 if count else None,
            "max": max(p["Maximum"] for p in points) / 1e3 if points else None,
            "n": count,
        }
    return metrics


class MemorySampler:
    """Samples the stack's summed resident memory every ``period`` s in a thread (the
    PSS sum where readable, else RSS): :attr:`peak`, MiB."""

    def __init__(self, processes: dict[str, int], period: float = 1.0) -> None:
        import threading

        self.processes, self.period = processes, period
        self.peak: float | None = None
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            total = stack_memory(self.processes)["sum"]
            value = total["pss"] if total["pss"] is not None else total["rss"]
            if value is not None:
                self.peak = value if self.peak is None else max(self.peak, value)
                self.count += 1

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


# -- main -------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=200, help="models (default 200)")
    parser.add_argument("--rows", type=int, default=1000, help="rows per city (default 1000)")
    parser.add_argument(
        "--trained",
        type=int,
        default=None,
        help="distinct models trained (default: --models, at most 200); the rest are copies",
    )
    parser.add_argument(
        "--warm-calls", type=int, default=10_000, help="warm calls per server (default 10000)"
    )
    parser.add_argument("--rounds", type=int, default=10, help="alternating blocks (default 10)")
    parser.add_argument("--warmup", type=int, default=1000, help="untimed warm calls first")
    parser.add_argument(
        "--cold-models", type=int, default=None, help="fresh models timed (default: all)"
    )
    parser.add_argument(
        "--peer-venv", type=Path, default=REPO_ROOT / ".venv-bench", help="MLServer's virtualenv"
    )
    parser.add_argument("--no-peer", action="store_true", help="skip MLServer")
    parser.add_argument(
        "--peer-parallel-workers",
        type=int,
        default=None,
        help="MLServer's parallel_workers (default: MLServer's default, 1; 0 = in-process)",
    )
    args = parser.parse_args()
    out = claim_stdout()
    cold_models = args.models if args.cold_models is None else min(args.cold_models, args.models)

    import boto3
    import httpx
    from botocore.config import Config

    sys.path.insert(0, str(REPO_ROOT / "bench" / "peers"))
    from mlserver_peer import MLServerPeer

    from citymodels_devkit.local.stack import LocalStack

    started_at = machine()
    began = time.perf_counter()
    trained = args.trained if args.trained is not None else min(args.models, 200)
    models = make_models(args.models, args.rows, seed=31, trained=trained)
    models_s = time.perf_counter() - began
    names = models["names"]
    trained = models["trained"]
    result: dict[str, Any] = {
        "benchmark": "endpoint",
        "machine": started_at,
        "models": len(names),
        "models_trained": trained,
        "models_note": (
            "every model trained on its own city"
            if trained == len(names)
            else f"{trained} models trained; model i >= {trained} is a copy of model "
            f"i mod {trained} under its own name (its own S3 object, download and load)"
        ),
        "rows_per_model": args.rows,
        "hyperparameters": models["hyperparameters"],
        "client": f"httpx {httpx.__version__}, one persistent connection per server, "
        "sequential, in its own process",
        "targets": TARGETS,
    }
    with tempfile.TemporaryDirectory(prefix="cm-bench-endpoint-") as tmp:
        root = Path(tmp)
        peer: MLServerPeer | None = None
        reason = "--no-peer" if args.no_peer else None
        if reason is None and trained < len(names):
            reason = f"only {trained} of {len(names)} models trained (--trained)"
        if reason is None:
            peer = MLServerPeer(
                args.peer_venv, root / "mlserver", parallel_workers=args.peer_parallel_workers
            )
            reason = peer.unavailable()
        if reason is None and peer is not None:
            try:
                result["mlserver_build"] = peer.build(
                    names, models["x"], models["y"], models["house_encoded"]
                )
                peer.start()
            except Exception as error:
                reason = f"MLServer did not start: {error}; log: {peer.log_tail(800)}"
                peer.stop()
        if reason is not None:
            peer = None
        models["x"] = models["y"] = None  # the peer has its copy: not in the stack's memory
        options = local_options(root / "stack")
        stack = LocalStack(None, options)
        try:
            outputs = stack.start()
            url = outputs["AwsEndpointUrl"]
            s3 = boto3.client(
                "s3",
                endpoint_url=url,
                region_name="us-east-1",
                config=Config(max_pool_connections=16),
            )
            targets = [f"{city}/{VERSION}.tar.gz" for city in names]

            def put(index: int) -> None:
                s3.put_object(
                    Bucket=outputs["DataBucket"],
                    Key=f"mme/{targets[index]}",
                    Body=models["artifacts"][index],
                )

            began = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(put, range(len(targets))))
            result["models_uploaded_s"] = time.perf_counter() - began
            stack.wait_idle(timeout=120)
            spec: dict[str, Any] = {
                "ours": {
                    "url": f"{stack.endpoint_url}/endpoints/{outputs['EndpointName']}/invocations",
                    "targets": targets,
                    "body": CSV_ROW,
                },
                "peer": None,
                "cold_models": cold_models,
                "warm_calls": args.warm_calls,
                "rounds": args.rounds,
                "warmup": args.warmup,
            }
            if peer is not None:
                tensor = {
                    "inputs": [
                        {
                            "name": "predict",
                            "shape": [1, len(models["house_encoded"])],
                            "datatype": "FP64",
                            "data": [float(v) for v in models["house_encoded"]],
                        }
                    ]
                }
                spec["peer"] = {
                    "urls": [peer.infer_url(name) for name in names],
                    "payload": json.dumps(tensor).encode(),
                }
            since = time.time() - 1
            processes = stack.processes()
            memory_before = stack_memory(processes)
            sampler = MemorySampler(processes)
            cpu = CpuWindow(processes)
            stack.invocation_timings(start=True)
            cpu.start()
            with sampler:
                measured = run_client(measure, spec, timeout=max(1800, len(names) * 0.2))
            cpu_s = cpu.stop()
            memory_after = stack_memory(processes)
            result["loadavg_at_end"] = loadavg()
            server_samples = stack.invocation_timings()
            stats = stack.endpoint_stats()
            load_metrics = model_load_metrics(url, outputs["EndpointName"], since)
        finally:
            stack.stop()
            if peer is not None:
                peer.stop()

    warm_ours = measured["warm_ns"]["ours"]
    ours_rps = len(warm_ours) / (measured["elapsed_ns"]["ours"] / 1e9)
    ours_cold = percentiles(measured["ours_cold_ns"], 1e6)
    ours_warm = percentiles(warm_ours, 1e3)
    # The client is sequential: the last len(warm_ours) invocations are the timed warm ones.
    server_warm = percentiles(server_samples[-len(warm_ours) :], 1e3)
    first_answer = measured["ours_first_answer"]
    ours_price = first_answer["predictions"][0]["score"] if first_answer else None
    result["ours"] = {
        "request": "POST /endpoints/{EndpointName}/invocations, text/csv, one raw row, "
        "X-Amzn-SageMaker-Target-Model round robin over every model",
        "cold_ms": ours_cold,
        "warm_us": ours_warm,
        "requests_per_s": ours_rps,
        "warm_server_us": server_warm,
        "cold_breakdown_ms": load_metrics,
        "endpoint_stats": (
            {"loads": stats.loads, "downloads": stats.downloads, "hits": stats.hits}
            if stats is not None
            else None
        ),
        "met": {
            "warm_server_p50": bool(
                server_warm and server_warm["p50"] / 1e3 <= TARGETS["warm_server_p50_ms"]
            ),
            "warm_p50": bool(ours_warm and ours_warm["p50"] / 1e3 <= TARGETS["warm_p50_ms"]),
            "cold_p50": bool(ours_cold and ours_cold["p50"] <= TARGETS["cold_p50_ms"]),
        },
    }
    result["models_prepared_s"] = models_s
    errors = measured["errors"]
    errors["total"] = errors["cold"] + errors["load"] + errors["warm"]
    result["errors"] = errors
    result["processes"] = processes
    result["stack_memory_mb"] = {
        "before_first_call": memory_before,
        "after_cold_loads_and_warm_calls": memory_after,
        "peak_sum_mb": sampler.peak,
        "samples": sampler.count,
        "note": "functions is this process: the functions, their routing and the API, and "
        "also this script (its models' artifacts; the training data is dropped first); "
        "rss sums count shared pages once per process, pss splits them",
    }
    total = memory_after["sum"]
    total_mb = total["pss"] if total["pss"] is not None else total["rss"]
    result["cpu_s"] = cpu_s
    result["met_at_10000_models"] = {
        "applies": len(names) >= 10_000,
        "errors": errors["total"] == TARGETS["errors"],
        "stack_memory": total_mb <= TARGETS["stack_memory_mib_at_10000_models"],
        "measured_by": "pss" if total["pss"] is not None else "rss",
    }
    sanity: dict[str, Any] = {
        "house": HOUSE,
        "true_price_model_0": models["true_price_model_0"],
        "ours_model_0": ours_price,
    }
    if peer is not None and measured["warm_ns"]["peer"]:
        warm_peer = measured["warm_ns"]["peer"]
        peer_rps = len(warm_peer) / (measured["elapsed_ns"]["peer"] / 1e9)
        peer_price = measured["peer_first_answer"]["outputs"][0]["data"][0]
        sanity["mlserver_model_0"] = peer_price
        result["mlserver"] = {
            "version": result.get("mlserver_build", {}).get("mlserver"),
            "request": "POST /v2/models/{name}/infer, one-row FP64 tensor of the 10 encoded "
            "features, round robin over every model",
            "settings": "MLServer's defaults but host and ports"
            + (
                f", parallel_workers {args.peer_parallel_workers}"
                if args.peer_parallel_workers is not None
                else " (parallel_workers 1)"
            ),
            "startup_s": peer.startup_s,
            "first_call_ms": percentiles(measured["peer_first_call_ns"], 1e6),
            "warm_us": percentiles(warm_peer, 1e3),
            "requests_per_s": peer_rps,
        }
        result["ratio_requests_per_s"] = ours_rps / peer_rps
        result["met_ratio"] = ours_rps / peer_rps >= TARGETS["ratio_to_mlserver"]
    else:
        result["mlserver"] = None
        result["mlserver_unavailable"] = reason or "no peer measurements"
        result["ratio_requests_per_s"] = None
    result["sanity"] = sanity
    return emit(result, out)


if __name__ == "__main__":
    sys.exit(main())
