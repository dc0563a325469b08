"""Benchmark finding the stuck runs among many cities: the watched-runs index vs a scan.

On moto (in-process, no network), a registry table holding ``--cities`` cities with one
published run each and ``--stuck`` runs in flight. Prints one JSON object:

- ``items_read``: what DynamoDB would read (``ScannedCount``) to find the runs in flight,
  by the reconciler's Query of the ``watched-runs`` index, and by a Scan of the table
  filtered on status (what the reconciler does not do); these counts are what a real
  table bills and what grows with the number of cities;
- ``query_ms`` / ``scan_ms``: p50/p90 of each over ``--repeat`` runs, on moto (moto's
  own costs, not DynamoDB's latency: compare them with each other only);
- ``machine``: CPU, cores, Python, load average at the start.

Run: ``python bench/bench_reconcile.py [--cities 10000] [--stuck 50] [--repeat 7]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import boto3
from common import claim_stdout, machine, percentiles
from moto import mock_aws

from citymodels.registry import (
    IN_PROGRESS,
    PROCESSING,
    WATCHED_INDEX,
    Registry,
    Run,
    table_definition,
)
from citymodels.versions import mint_version

TABLE = "bench-registry"


def create_table(dynamodb: Any) -> None:
    dynamodb.create_table(TableName=TABLE, **table_definition())


def fill(dynamodb: Any, registry: Registry, cities: int, stuck: int) -> None:
    """One published run per city (as the registry leaves it: out of the index), then
    ``stuck`` runs in flight written by the registry itself."""
    version = mint_version("2026-11-25T01:00:00Z", "01")
    items = [
        {
            "pk": {"S": f"CITY#City{n:05d}"},
            "sk": {"S": f"RUN#{version}"},
            "city": {"S": f"City{n:05d}"},
            "run": {"S": version},
            "status": {"S": "PUBLISHED"},
        }
        for n in range(cities)
    ]
    for start in range(0, len(items), 25):
        batch = [{"PutRequest": {"Item": item}} for item in items[start : start + 25]]
        dynamodb.batch_write_item(RequestItems={TABLE: batch})
    newer = mint_version("2026-11-25T02:00:00Z", "02")
    for n in range(stuck):
        registry.create_run(Run(f"City{n:05d}", newer, f"raw/City{n:05d}/x.csv", PROCESSING))


def query_in_flight(dynamodb: Any) -> int:
    """The reconciler's read: one Query per in-flight status; items read."""
    read = 0
    for status in IN_PROGRESS:
        kwargs: dict[str, Any] = {
            "TableName": TABLE,
            "IndexName": WATCHED_INDEX,
            "KeyConditionExpression": "watched_status = :s",
            "ExpressionAttributeValues": {":s": {"S": status}},
        }
        while True:
            answer = dynamodb.query(**kwargs)
            read += answer["ScannedCount"]
            if "LastEvaluatedKey" not in answer:
                break
            kwargs["ExclusiveStartKey"] = answer["LastEvaluatedKey"]
    return read


def scan_in_flight(dynamodb: Any) -> int:
    """What a scan would read to find the same runs."""
    read = 0
    kwargs: dict[str, Any] = {
        "TableName": TABLE,
        "FilterExpression": "#s IN (:p, :t)",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": {":p": {"S": "PROCESSING"}, ":t": {"S": "TRAINING"}},
    }
    while True:
        answer = dynamodb.scan(**kwargs)
        read += answer["ScannedCount"]
        if "LastEvaluatedKey" not in answer:
            return read
        kwargs["ExclusiveStartKey"] = answer["LastEvaluatedKey"]


def timed(measure: Any, repeat: int) -> tuple[int, list[int]]:
    samples, read = [], 0
    for _ in range(repeat):
        start = time.perf_counter_ns()
        read = measure()
        samples.append(time.perf_counter_ns() - start)
    return read, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cities", type=int, default=10_000)
    parser.add_argument("--stuck", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    out = claim_stdout()
    result: dict[str, Any] = {"machine": machine(), "cities": args.cities, "stuck": args.stuck}
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        create_table(dynamodb)
        fill(dynamodb, Registry(TABLE, client=dynamodb), args.cities, args.stuck)
        query_read, query_ns = timed(lambda: query_in_flight(dynamodb), args.repeat)
        scan_read, scan_ns = timed(lambda: scan_in_flight(dynamodb), args.repeat)
    result["items_read"] = {"index_query": query_read, "table_scan": scan_read}
    result["query_ms"] = percentiles(query_ns, 1e6)
    result["scan_ms"] = percentiles(scan_ns, 1e6)
    out.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
