"""Benchmark ``GET /cities`` and ``citymodels status`` at 10,000 cities on the local stack.

A fresh local stack runs in this process. Its registry is filled through the AWS API
(``TransactWriteItems``, as :meth:`Registry.create_run` writes a run and its city) with
``--cities`` cities, one upload each: training 10,000 models through the pipeline would
take an hour and measure something else. Then a client in a process of its own (httpx,
one persistent connection, sequential) pages through ``GET /cities?limit=100`` with the
admin key (pattern ``*``), and asks for single pages with a key restricted to one
prefix (``City09*``), which reads only that key range. It also times the first page of
``citymodels status`` (50 cities, each with its runs) as the CLI builds it.

Reports p50 / p90 / p99 in milliseconds. Target: a page of 100 in ≤ 50 ms p50 at
10,000 cities. Prints one JSON object. Run: ``python bench/bench_cities.py [--cities 10000]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import claim_stdout, emit, local_options, machine, percentiles, run_client

TARGET_P50_MS = 50.0
PAGE = 100


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    import httpx

    clock = time.perf_counter_ns
    samples: dict[str, list[int]] = {"all": [], "prefix": []}
    pages = 0
    seen = 0
    with httpx.Client(base_url=spec["url"], timeout=60) as api:
        for kind, key in (("all", spec["admin_key"]), ("prefix", spec["prefix_key"])):
            headers = {"Authorization": f"Bearer {key}"}
            for _ in range(spec["passes"]):
                params: dict[str, Any] = {"limit": PAGE}
                while True:
                    began = clock()
                    answer = api.get("cities", params=params, headers=headers)
                    samples[kind].append(clock() - began)
                    answer.raise_for_status()
                    body = answer.json()
                    if kind == "all":
                        pages += 1
                        seen += len(body["cities"])
                    if body["next"] is None:
                        break
                    params = {"limit": PAGE, "next": body["next"]}
    return {"samples": samples, "pages": pages, "seen": seen}


def fill(registry: Any, client: Any, table: str, cities: int) -> float:
    """Write ``cities`` cities (one FAILED upload each) as ``create_run`` does."""
    from citymodels.registry import FAILED, Run

    began = time.perf_counter()
    for i in range(cities):
        run = Run(
            city=f"City{i:05d}",
            run="20261125T010000000Z-01000000000000000000000000000000",
            key=f"raw/City{i:05d}/houses.csv",
            status=FAILED,
            reason="benchmark",
        )
        registry.create_run(run)
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cities", type=int, default=10_000, help="cities in the registry")
    parser.add_argument("--passes", type=int, default=3, help="times through every page")
    args = parser.parse_args()
    out = claim_stdout()

    import boto3

    from citymodels.registry import Registry
    from citymodels_devkit import operations
    from citymodels_devkit.local.stack import LocalStack

    started_at = machine()
    with tempfile.TemporaryDirectory(prefix="cm-bench-cities-") as tmp:
        stack = LocalStack(None, local_options(Path(tmp) / "stack"))
        try:
            outputs = stack.start()
            dynamodb = boto3.client(
                "dynamodb", endpoint_url=outputs["AwsEndpointUrl"], region_name="us-east-1"
            )
            registry = Registry(outputs["RegistryTable"], client=dynamodb)
            fill_s = fill(registry, dynamodb, outputs["RegistryTable"], args.cities)
            prefix_key, _ = registry.create_key(["City09*"], description="bench: one prefix")
            status_ns = []
            for _ in range(5):
                began = time.perf_counter_ns()
                overview, _last = operations.cities_overview(registry, limit=50)
                status_ns.append(time.perf_counter_ns() - began)
            assert len(overview) == 50
            spec = {
                "url": outputs["ApiUrl"],
                "admin_key": outputs["AdminApiKey"],
                "prefix_key": prefix_key,
                "passes": args.passes,
            }
            measured = run_client(measure, spec, timeout=3600)
        finally:
            stack.stop()

    page_ms = percentiles(measured["samples"]["all"], 1e6)
    prefix_ms = percentiles(measured["samples"]["prefix"], 1e6)
    assert page_ms is not None and prefix_ms is not None
    result = {
        "benchmark": "cities",
        "machine": started_at,
        "client": "httpx, one persistent connection, sequential, in its own process",
        "cities": args.cities,
        "fill_s": fill_s,
        "page_size": PAGE,
        "pages_per_pass": measured["pages"] // args.passes,
        "cities_seen_per_pass": measured["seen"] // args.passes,
        "get_cities_page_ms": page_ms,
        "get_cities_prefix_key_ms": prefix_ms,
        "status_first_page_ms": percentiles(status_ns, 1e6),
        "target_p50_ms": TARGET_P50_MS,
        "met": page_ms["p50"] <= TARGET_P50_MS,
    }
    return emit(result, out)


if __name__ == "__main__":
    sys.exit(main())
