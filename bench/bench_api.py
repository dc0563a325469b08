"""Benchmark the HTTP API end to end on the local stack: authorizer + predict + endpoint.

A fresh local stack runs in this process. One city is published through the real
path first: its CSV is dropped into ``raw/{city}/`` and the bench waits until the
upload is PUBLISHED (``GET /cities/{city}``). Then a client in a process of its own
(httpx, ONE persistent connection, sequential) sends, warm:

- ``api``: ``POST {ApiUrl}cities/{city}/predictions`` with ``Authorization: Bearer
  <AdminApiKey>`` and ``{"instances": [one house]}`` — API Gateway's route and
  REQUEST authorizer (its cache), the predict function (alias lookup, validation,
  ``InvokeEndpoint`` through boto3) and the endpoint;
- ``endpoint``: the same house straight to ``POST /endpoints/{name}/invocations`` for the
  city's current model (unsigned raw HTTP, ``text/csv``), so that ``api_overhead_us`` =
  api p50 − endpoint p50 is what the API adds.

The two alternate in blocks, so both see the same machine. Reports p50 / p90 / p99 in
microseconds and requests/s. Target: api p50 ≤ 3 ms.

Prints one JSON object to stdout. Run: ``python bench/bench_api.py [--calls 5000]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import claim_stdout, emit, loadavg, local_options, machine, percentiles, run_client

HOUSE = {
    "YEAR_BUILT": 1995, "SQUARE_FEET": 2500, "NUM_BEDROOMS": 3, "NUM_BATHROOMS": 2.5,
    "LOT_ACRES": 1.0, "GARAGE_SPACES": 2, "FRONT_PORCH": "y", "DECK": "n",
}  # fmt: skip
CSV_ROW = b"1995,2500,3,2.5,1.0,2,y,n\n"
TARGET_P50_MS = 3.0


# -- the client (its own process) -------------------------------------------------------


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    import httpx

    clock = time.perf_counter_ns
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    kinds = {
        "api": (
            spec["api"]["url"],
            spec["api"]["body"],
            {"Authorization": f"Bearer {spec['api']['key']}", "Content-Type": "application/json"},
        ),
        "endpoint": (
            spec["endpoint"]["url"],
            spec["endpoint"]["body"],
            {
                "X-Amzn-SageMaker-Target-Model": spec["endpoint"]["target"],
                "Content-Type": "text/csv",
            },
        ),
    }
    clients = {kind: httpx.Client(limits=limits, timeout=60.0) for kind in kinds}
    samples: dict[str, list[int]] = {kind: [] for kind in kinds}
    elapsed: dict[str, int] = dict.fromkeys(kinds, 0)
    answers: dict[str, Any] = {}
    try:
        for kind, (url, body, headers) in kinds.items():
            answer = clients[kind].post(url, content=body, headers=headers)
            if answer.status_code != 200:
                raise RuntimeError(f"{kind}: {answer.status_code} {answer.text[:300]}")
            answers[kind] = answer.json()

        def block(kind: str, count: int) -> list[int]:
            url, body, headers = kinds[kind]
            post = clients[kind].post
            out = []
            for _ in range(count):
                started = clock()
                answer = post(url, content=body, headers=headers)
                out.append(clock() - started)
                if answer.status_code != 200:
                    raise RuntimeError(f"{kind}: {answer.status_code} {answer.text[:300]}")
            return out

        for kind in kinds:
            block(kind, spec["warmup"])
        per_round = max(1, spec["calls"] // spec["rounds"])
        for _ in range(spec["rounds"]):
            for kind in kinds:
                started = clock()
                samples[kind] += block(kind, per_round)
                elapsed[kind] += clock() - started
    finally:
        for client in clients.values():
            client.close()
    return {"samples": samples, "elapsed": elapsed, "answers": answers}


# -- where the time goes (diagnostics; wraps the stack's classes, changes no code) --------


class Breakdown:
    """Times, per API request, what the stack process does on its critical path.

    ``gateway``: the local API Gateway's ``handle`` (route, authorizer, proxy event,
    handler, response), ``authorize``: the authorizer step (a cache hit when warm),
    ``function``: the predict function's execution (``FunctionHost.invoke``),
    ``invoke_endpoint``: the predict function's ``EndpointClient.invoke_csv`` (boto3),
    ``endpoint_server``: the endpoint process's side of every InvokeEndpoint (from the
    request reaching its ASGI app to the response sent; timed in that process). Differences between nested steps are
    what lies between them: thread hand-offs, botocore, HTTP.
    """

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}
        self.enabled = False

    def add(self, name: str, seconds: float) -> None:
        if self.enabled:
            self.samples.setdefault(name, []).append(seconds)

    def install(self) -> None:
        from citymodels.endpoint import EndpointClient
        from citymodels_devkit.local import apigw, lambdas

        breakdown = self

        def timed(name: str, function: Any) -> Any:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    breakdown.add(name, time.perf_counter() - started)

            return wrapper

        def timed_async(name: str, function: Any) -> Any:
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await function(*args, **kwargs)
                finally:
                    breakdown.add(name, time.perf_counter() - started)

            return wrapper

        gateway = apigw.ApiGateway
        gateway.handle = timed_async("gateway", gateway.handle)  # type: ignore[method-assign]
        gateway.authorize = timed("authorize", gateway.authorize)  # type: ignore[method-assign]
        host = lambdas.FunctionHost
        host.invoke = timed("function", host.invoke)  # type: ignore[method-assign]
        EndpointClient.invoke_csv = timed(  # type: ignore[method-assign]
            "invoke_endpoint", EndpointClient.invoke_csv
        )

    def report(self) -> dict[str, Any]:
        medians = {
            name: statistics.median(values) * 1e6 for name, values in self.samples.items() if values
        }
        get = medians.get
        between = {}
        if get("gateway") and get("function") and get("authorize"):
            between["gateway_minus_authorize_and_function"] = (
                medians["gateway"] - medians["authorize"] - medians["function"]
            )
        if get("function") and get("invoke_endpoint"):
            between["function_minus_invoke_endpoint"] = (
                medians["function"] - medians["invoke_endpoint"]
            )
        if get("invoke_endpoint") and get("endpoint_server"):
            between["invoke_endpoint_minus_endpoint_server"] = (
                medians["invoke_endpoint"] - medians["endpoint_server"]
            )
        return {
            "p50_us": medians,
            "between_p50_us": between,
            "n": {k: len(v) for k, v in self.samples.items()},
        }


# -- main -------------------------------------------------------------------------------


def wait_published(api: Any, city: str, key: str, timeout: float) -> dict[str, Any]:
    from citymodels.registry import FINAL

    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        answer = api.get(f"cities/{city}")
        if answer.status_code == 200:
            body = answer.json()
            uploads = [u for u in body.get("uploads", []) if u.get("key") == key]
            if uploads:
                last = uploads[0]
                if last.get("status") in FINAL:
                    if last["status"] != "PUBLISHED":
                        raise RuntimeError(f"the upload ended {last}")
                    return dict(body)
        time.sleep(0.2)
    raise TimeoutError(f"upload {key} not published after {timeout} s: {last}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000, help="timed calls of each kind")
    parser.add_argument("--rounds", type=int, default=10, help="alternating blocks (default 10)")
    parser.add_argument("--warmup", type=int, default=500, help="untimed calls of each kind")
    parser.add_argument("--rows", type=int, default=1000, help="rows of the city's upload")
    parser.add_argument(
        "--breakdown", action="store_true", help="also time the steps inside the stack process"
    )
    args = parser.parse_args()
    out = claim_stdout()
    breakdown = Breakdown() if args.breakdown else None
    if breakdown is not None:
        breakdown.install()

    import boto3
    import httpx

    from citymodels_devkit.datagen import generate
    from citymodels_devkit.local.stack import LocalStack

    started_at = machine()
    city, table, _ = next(generate(1, args.rows, seed=7, noise=5_000.0))
    with tempfile.TemporaryDirectory(prefix="cm-bench-api-") as tmp:
        options = local_options(Path(tmp) / "stack")
        stack = LocalStack(None, options)
        try:
            outputs = stack.start()
            key = f"raw/{city}/houses.csv"
            s3 = boto3.client("s3", endpoint_url=outputs["AwsEndpointUrl"], region_name="us-east-1")
            began = time.perf_counter()
            s3.put_object(Bucket=outputs["DataBucket"], Key=key, Body=table.to_csv_bytes())
            headers = {"Authorization": f"Bearer {outputs['AdminApiKey']}"}
            with httpx.Client(base_url=outputs["ApiUrl"], headers=headers, timeout=30) as api:
                published = wait_published(api, city, key, timeout=120)
            publish_s = time.perf_counter() - began
            stack.wait_idle(timeout=60)
            version = published["current_version"]
            spec = {
                "api": {
                    "url": f"{outputs['ApiUrl']}cities/{city}/predictions",
                    "key": outputs["AdminApiKey"],
                    "body": json.dumps({"instances": [HOUSE]}).encode(),
                },
                "endpoint": {
                    "url": f"{stack.endpoint_url}/endpoints/{outputs['EndpointName']}/invocations",
                    "target": f"{city}/{version}.tar.gz",
                    "body": CSV_ROW,
                },
                "calls": args.calls,
                "rounds": args.rounds,
                "warmup": args.warmup,
            }
            if breakdown is not None:
                breakdown.enabled = True
                stack.invocation_timings(start=True)
            measured = run_client(measure, spec, timeout=1800)
            if breakdown is not None:
                breakdown.samples["endpoint_server"] = [
                    ns / 1e9 for ns in stack.invocation_timings()
                ]
        finally:
            stack.stop()

    samples, elapsed = measured["samples"], measured["elapsed"]
    api_us = percentiles(samples["api"], 1e3)
    endpoint_us = percentiles(samples["endpoint"], 1e3)
    assert api_us is not None and endpoint_us is not None
    api_answer = measured["answers"]["api"]
    result = {
        "benchmark": "api",
        "machine": started_at,
        "loadavg_at_end": loadavg(),
        "client": (
            f"httpx {httpx.__version__}, one persistent connection per route, sequential, "
            "in its own process"
        ),
        "city": city,
        "model_version": version,
        "publish_s": publish_s,
        "api_us": api_us,
        "api_requests_per_s": len(samples["api"]) / (elapsed["api"] / 1e9),
        "endpoint_us": endpoint_us,
        "endpoint_requests_per_s": len(samples["endpoint"]) / (elapsed["endpoint"] / 1e9),
        "api_overhead_us": api_us["p50"] - endpoint_us["p50"],
        "target_p50_ms": TARGET_P50_MS,
        "met": api_us["p50"] / 1e3 <= TARGET_P50_MS,
        "breakdown": breakdown.report() if breakdown is not None else None,
        "sanity": {
            "api_answer": api_answer,
            "endpoint_answer": measured["answers"]["endpoint"],
        },
    }
    return emit(result, out)


if __name__ == "__main__":
    sys.exit(main())
