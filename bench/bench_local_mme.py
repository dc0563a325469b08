"""Benchmark the local multi-model endpoint in-process: warm, cold and disk-reload invokes.

Prints one JSON object to stdout:

- ``warm_us``: one-row CSV invokes of loaded models (round robin over every model),
  p50/p99/mean in microseconds; ``warm_json_us`` the same with a JSON body;
- ``pipeline_us``: the same request through the containers alone (preprocessor
  ``input_fn``/``predict_fn``/``output_fn`` then ``LinearLearnerModel.invoke``), no MME;
  ``mme_overhead_us`` = warm p50 − pipeline p50, the endpoint's own cost;
- ``cold_ms``: each model's first invoke (download from an in-memory fetch, disk write,
  load on a loader thread, first answer), p50/p99;
- ``disk_reload_ms``: invokes of models evicted from memory (``max_models`` = 10,
  cycling through all): reload from the disk tier, no download;
- ``warm_threads``: calls per second with 4 threads on warm models (2 shared cores,
  one GIL: the point is that the lock does not collapse throughput).

The models are trained once with the local Linear Learner's ``fit`` on a small
synthetic city, then given distinct weights. Run:
``python bench/bench_local_mme.py [--models 200] [--calls 20000]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from citymodels_devkit.linear_learner import LinearLearnerModel, fit, load_model
from citymodels_devkit.local.mme.models import (
    EndpointOptions,
    ModelArtifactMissing,
    MultiModelEndpoint,
)
from citymodels_devkit.paths import load_container_module

CSV_BODY = b"1995,3000,3,2,1.0,2,y,n\n"
JSON_BODY = json.dumps(
    {
        "instances": [
            {
                "YEAR_BUILT": 1995,
                "SQUARE_FEET": 3000,
                "NUM_BEDROOMS": 3,
                "NUM_BATHROOMS": 2,
                "LOT_ACRES": 1.0,
                "GARAGE_SPACES": 2,
                "FRONT_PORCH": "y",
                "DECK": "n",
            }
        ]
    }
).encode()
_JSON = "application/json"
HYPERPARAMETERS = {
    "feature_dim": "10",
    "predictor_type": "regressor",
    "loss": "absolute_loss",
    "epochs": "3",
    "num_models": "4",
    "mini_batch_size": "100",
}


def trained_template() -> LinearLearnerModel:
    """One model trained on 300 synthetic houses (10 encoded features)."""
    rng = np.random.default_rng(3)
    rows = 300
    sqft = rng.normal(3000, 750, rows)
    year = rng.integers(1960, 2020, rows).astype(float)
    porch = rng.integers(0, 2, rows).astype(float)
    deck = rng.integers(0, 2, rows).astype(float)
    x = np.column_stack(
        [
            year,
            sqft,
            rng.integers(2, 7, rows).astype(float),
            rng.integers(2, 7, rows) / 2,
            rng.normal(1.0, 0.25, rows),
            rng.integers(0, 4, rows).astype(float),
            porch,
            1 - porch,
            deck,
            1 - deck,
        ]
    )
    y = 150 * sqft - 5000 * (2019 - year) + 10_000 * deck + 100_000 + rng.normal(0, 5000, rows)
    model, _ = fit(x, y, None, None, HYPERPARAMETERS, seed=0)
    return model


def artifacts(count: int) -> dict[str, bytes]:
    """``count`` artifacts: the trained template with weights varied per city."""
    template = trained_template()
    rng = random.Random(5)
    objects = {}
    for index in range(count):
        weights = tuple(w * rng.uniform(0.7, 1.3) for w in template.weights)
        model = dataclasses.replace(template, weights=weights)
        objects[f"City{index:04d}/20261125T000000000Z-00.tar.gz"] = model.to_artifact_bytes()
    return objects


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": ordered[len(ordered) // 2],
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "mean": statistics.fmean(ordered),
        "n": len(ordered),
    }


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter_ns()
    action()
    return float(time.perf_counter_ns() - started)


def invokes(
    endpoint: MultiModelEndpoint, targets: list[str], body: bytes, content_type: str
) -> list[float]:
    """Invoke each target in turn; return each call's nanoseconds."""
    samples = []
    clock = time.perf_counter_ns
    for target_model in targets:
        started = clock()
        result = endpoint.invoke(target_model, body, content_type, _JSON)
        samples.append(float(clock() - started))
        if not result.ok:
            raise RuntimeError(f"{target_model}: {result.status} {result.message}")
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=200, help="target models (default 200)")
    parser.add_argument("--calls", type=int, default=20_000, help="warm calls (default 20000)")
    args = parser.parse_args()

    objects = artifacts(args.models)
    names = list(objects)

    def fetch(target_model: str) -> bytes:
        try:
            return objects[target_model]
        except KeyError:
            raise ModelArtifactMissing(target_model) from None

    inference = load_container_module("inference")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "preprocessor").mkdir()
        preprocessor_dir = root / "preprocessor"
        endpoint = MultiModelEndpoint(
            "bench", fetch_model=fetch, preprocessor=preprocessor_dir, cache_dir=root / "cache"
        )
        model = load_model(objects[names[0]])
        preprocessor = inference.model_fn(str(preprocessor_dir))

        def pipeline_only() -> None:
            rows = inference.input_fn(CSV_BODY, "text/csv")
            features, kind = inference.output_fn(
                inference.predict_fn(rows, preprocessor), "text/csv"
            )
            model.invoke(features.encode(), kind, "application/json")

        with endpoint:
            cold = invokes(endpoint, names, CSV_BODY, "text/csv")
            assert endpoint.stats().loads == len(names)
            invokes(endpoint, names[:1] * 2000, CSV_BODY, "text/csv")  # warm-up
            for _ in range(2000):
                pipeline_only()
            # Blocks of the endpoint and of the bare pipeline alternate, so that both see
            # the same machine (the cores are shared).
            warm: list[float] = []
            pipeline: list[float] = []
            block = 500
            for start in range(0, args.calls, block):
                targets = [names[i % len(names)] for i in range(start, start + block)]
                warm += invokes(endpoint, targets, CSV_BODY, "text/csv")
                pipeline += [timed(pipeline_only) for _ in range(block)]
            warm_json = invokes(endpoint, targets * (args.calls // 4 // block), JSON_BODY, _JSON)
            threads_rate = threaded_rate(endpoint, names, threads=4, calls=args.calls // 4)
            stats = endpoint.stats()

        reload_endpoint = MultiModelEndpoint(
            "bench-reload", fetch_model=fetch, preprocessor=preprocessor_dir,
            cache_dir=root / "cache-reload", options=EndpointOptions(max_models=10),
        )  # fmt: skip
        with reload_endpoint:
            invokes(reload_endpoint, names, CSV_BODY, "text/csv")  # first pass downloads
            reload = invokes(reload_endpoint, names, CSV_BODY, "text/csv")
            reload_stats = reload_endpoint.stats()

    warm_us = percentiles([ns / 1e3 for ns in warm])
    pipeline_us = percentiles([ns / 1e3 for ns in pipeline])
    result = {
        "benchmark": "local_mme",
        "models": len(names),
        "artifact_bytes": len(objects[names[0]]),
        "warm_us": warm_us,
        "warm_json_us": percentiles([ns / 1e3 for ns in warm_json]),
        "pipeline_us": pipeline_us,
        "mme_overhead_us": warm_us["p50"] - pipeline_us["p50"],
        "cold_ms": percentiles([ns / 1e6 for ns in cold]),
        "disk_reload_ms": percentiles([ns / 1e6 for ns in reload]),
        "warm_threads": threads_rate,
        "stats": {
            "loads": stats.loads,
            "downloads": stats.downloads,
            "hits": stats.hits,
            "misses": stats.misses,
            "memory_bytes_per_model": stats.memory_bytes / max(1, len(stats.loaded_models)),
            "reload_downloads": reload_stats.downloads,
            "reload_loads": reload_stats.loads,
            "reload_evictions": reload_stats.evictions,
        },
    }
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def threaded_rate(
    endpoint: MultiModelEndpoint, names: list[str], *, threads: int, calls: int
) -> dict[str, float]:
    """Warm calls per second with ``threads`` threads making ``calls`` calls each."""
    start = threading.Barrier(threads + 1)

    def work(offset: int) -> None:
        start.wait()
        for i in range(calls):
            endpoint.invoke(names[(offset + i) % len(names)], CSV_BODY, "text/csv", "")

    workers = [threading.Thread(target=work, args=(k * 37,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    return {"threads": threads, "calls": threads * calls, "calls_per_s": threads * calls / elapsed}


if __name__ == "__main__":
    sys.exit(main())
