"""How long the local stack takes to restore the state of N cities (default 1,000).

Builds the state a stack holds after onboarding N cities, directly through the AWS
APIs of a local AWS endpoint that keeps its state (onboarding 1,000 cities through
the real pipeline would take most of an hour): per city the objects the pipeline
writes (the raw upload, its ``inputs/`` copy of that version, the processed splits,
the training output, the served model under ``mme/``, two reports) and the registry
items it writes through :class:`citymodels.registry.Registry` (attempt, run, job
records, publish, status updates), plus one API key per ten cities.

Then measures, each restore in a fresh process (moto imported, nothing else timed):

- ``snapshot``: restoring after ``local down`` (one snapshot, empty journal);
- ``journal``: restoring after a SIGKILL with everything since the first snapshot in
  the journal (the worst case: the scheduled snapshot never ran);
- the snapshot's write time and size;
- what the journal adds to a change: ``PutObject`` (20 KB) p50/p90 without and with a
  kept state.

Prints one JSON object; the figures are medians over ``--runs`` restores.

Usage: ``python bench/bench_restore.py [--cities 1000] [--rows 500] [--runs 3]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import claim_stdout, machine, percentiles

ACCOUNT = "123456789012"
REGION = "us-east-1"
BUCKET = "cm-bench-databucket"
TABLE = "cm-bench-registrytable"
QUEUES = ("cm-bench-onboardqueue", "cm-bench-failurequeue", "cm-bench-capacityretryqueue")


def restore_once(directory: str) -> None:
    """Child process: restore ``directory`` into an empty moto; print seconds and counts."""
    from citymodels_devkit.local.aws import build_aws_app

    started = time.perf_counter()
    app = build_aws_app(state_dir=Path(directory), event_buckets=[BUCKET])
    whole = time.perf_counter() - started
    restored = app.restored
    assert restored is not None
    from moto.dynamodb.models import dynamodb_backends
    from moto.s3.models import s3_backends

    objects = sum(
        len(versions)
        for _key, versions in s3_backends[ACCOUNT]["aws"].buckets[BUCKET].keys._iterlists()
    )
    items = len(list(dynamodb_backends[ACCOUNT][REGION].tables[TABLE].all_items()))
    print(json.dumps({"seconds": restored.seconds, "with_app_s": whole,
                      "records": restored.records, "objects": objects, "items": items}))  # fmt: skip


def measure_restores(directory: Path, runs: int) -> dict[str, Any]:
    seconds = []
    whole = []
    last: dict[str, Any] = {}
    for _ in range(runs):
        copy = Path(tempfile.mkdtemp(prefix="cm-restore-"))
        shutil.rmtree(copy)
        shutil.copytree(directory, copy)
        done = subprocess.run(
            [sys.executable, __file__, "--restore-only", str(copy)],
            capture_output=True,
            text=True,
            check=True,
        )
        shutil.rmtree(copy, ignore_errors=True)
        last = json.loads(done.stdout.strip().splitlines()[-1])
        seconds.append(last["seconds"])
        whole.append(last["with_app_s"])
    return {
        "median_s": statistics.median(seconds),
        "runs_s": seconds,
        "median_with_app_s": statistics.median(whole),
        "journal_records": last["records"],
        "s3_object_versions": last["objects"],
        "registry_items": last["items"],
    }


def template_tables() -> dict[str, Any]:
    """The template's DynamoDB tables, resolved as the local stack resolves them."""
    from citymodels_devkit.local.stack import LOCAL_IMAGES
    from citymodels_devkit.local.template import resolve_template
    from citymodels_devkit.paths import REPO_ROOT

    resolved = resolve_template(
        REPO_ROOT / "template.yaml", stack_name="cm-bench", parameter_overrides=LOCAL_IMAGES
    )
    return dict(resolved.tables)


def put_latency_us(url: str, bucket: str, count: int = 300) -> dict[str, float] | None:
    """p50/p90 of a 20 KB ``PutObject`` through the endpoint at ``url`` (µs)."""
    import boto3

    s3 = boto3.session.Session(
        aws_access_key_id="local", aws_secret_access_key="local", region_name=REGION
    ).client("s3", endpoint_url=url)
    s3.create_bucket(Bucket=bucket)
    body = b"x" * 20_000
    samples = []
    for i in range(count):
        started = time.perf_counter_ns()
        s3.put_object(Bucket=bucket, Key=f"latency/{i}.csv", Body=body)
        samples.append(time.perf_counter_ns() - started)
    return percentiles(samples, 1e3)


def build_state(url: str, cities: int, rows: int) -> None:
    """Write N onboarded cities' objects and registry items through the AWS APIs."""
    import boto3
    from botocore.config import Config

    from citymodels.registry import Registry, Run
    from citymodels_devkit.datagen import generate_city

    config = Config(max_pool_connections=16)
    session = boto3.session.Session(
        aws_access_key_id="local", aws_secret_access_key="local", region_name=REGION
    )
    s3 = session.client("s3", endpoint_url=url, config=config)
    dynamodb = session.client("dynamodb", endpoint_url=url, config=config)
    registry = Registry(TABLE, client=dynamodb)
    table, _ = generate_city("Bench_City", rows, seed=1, noise=0.1, index=0)
    csv = table.to_csv_bytes()
    third = len(csv) // 3
    model = hashlib.sha256(csv).digest() * 64  # ~2 KB, as a Linear Learner model.tar.gz

    def city(i: int) -> None:
        name = f"Bench_{i:04d}"
        run = f"20261204T{i // 3600 % 24:02d}{i // 60 % 60:02d}{i % 60:02d}000Z-{i:032X}"
        key = f"raw/{name}/houses.csv"
        body = csv + f"{i}\n".encode()
        version = s3.put_object(Bucket=BUCKET, Key=key, Body=body)["VersionId"]
        sha = hashlib.sha256(body).hexdigest()
        registry.record_attempt(name, sha, run)
        registry.create_run(Run(name, run, key, "PROCESSING", sha256=sha, size=len(body)))
        processing = f"cm-bench-{i:08x}-p-1"
        registry.name_job(
            name,
            run,
            processing,
            expected_status=["PROCESSING"],
            sha256=sha,
            attempt=1,
            processing_job=processing,
            input_key=f"inputs/{name}/{run}/houses.csv",
        )
        s3.copy_object(
            Bucket=BUCKET,
            Key=f"inputs/{name}/{run}/houses.csv",
            CopySource={"Bucket": BUCKET, "Key": key, "VersionId": version},
        )
        for split, part in (
            ("train", csv[:third]),
            ("validation", csv[third : 2 * third]),
            ("test", csv[2 * third :]),
            ("test-raw", csv[2 * third :]),
        ):
            s3.put_object(
                Bucket=BUCKET, Key=f"processed/{name}/{run}/{split}/{split}.csv", Body=part
            )
        registry.update_run(
            name, run, expected_status=["PROCESSING"], status="TRAINING", training_job=processing
        )
        training = f"cm-bench-{i:08x}-t-1"
        registry.name_job(name, run, training, expected_status=["TRAINING"], training_job=training)
        output = f"training/{name}/{run}/output/model.tar.gz"
        s3.put_object(Bucket=BUCKET, Key=output, Body=model)
        model_key = f"mme/{name}/{run}.tar.gz"
        s3.copy_object(Bucket=BUCKET, Key=model_key, CopySource={"Bucket": BUCKET, "Key": output})
        for report in ("validation", "gate"):
            s3.put_object(
                Bucket=BUCKET,
                Key=f"reports/{name}/{run}/{report}.json",
                Body=json.dumps({"city": name, "run": run, "ok": True}).encode(),
            )
        metrics = {"test:absolute_loss": 1000.0 + i, "validation:r2": 0.99}
        registry.publish(name, run, metrics=metrics, model_key=model_key)
        registry.update_run(name, run, status="PUBLISHED", model_key=model_key, metrics=metrics)
        if i % 10 == 0:
            registry.create_key([f"Bench_{i // 10:03d}*"], description="bench key")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(city, range(cities)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cities", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=500, help="rows per city's upload")
    parser.add_argument("--runs", type=int, default=3, help="restores measured per case")
    parser.add_argument("--restore-only", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.restore_only:
        restore_once(args.restore_only)
        return
    out = claim_stdout()
    result: dict[str, Any] = {"benchmark": "restore", "machine": machine()}
    result["parameters"] = {"cities": args.cities, "rows": args.rows, "runs": args.runs}

    import boto3

    from citymodels_devkit.local.aws import LocalAwsServer, build_aws_app

    # The journal's cost per change: the same writes without, then with, a kept state
    # (measured first: the store's journaling wraps moto's backends process-wide).
    with LocalAwsServer(build_aws_app(), port=0) as plain:
        result["put_object_us_without_state"] = put_latency_us(plain.url, "cm-bench-plain")
    work = Path(tempfile.mkdtemp(prefix="cm-bench-restore-"))
    state = work / "state"
    app = build_aws_app(state_dir=state, event_buckets=[BUCKET])
    server = LocalAwsServer(app, port=0).start()
    assert app.store is not None
    try:
        session = boto3.session.Session(
            aws_access_key_id="local", aws_secret_access_key="local", region_name=REGION
        )
        s3 = session.client("s3", endpoint_url=server.url)
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        # The registry table as the template defines it (keys, the watched-runs index).
        spec = next(iter(template_tables().values()))
        session.client("dynamodb", endpoint_url=server.url).create_table(
            TableName=TABLE,
            KeySchema=spec["KeySchema"],
            AttributeDefinitions=spec["AttributeDefinitions"],
            GlobalSecondaryIndexes=spec["GlobalSecondaryIndexes"],
            BillingMode="PAY_PER_REQUEST",
        )
        sqs = session.client("sqs", endpoint_url=server.url)
        for queue in QUEUES:
            sqs.create_queue(QueueName=queue)
        app.store.snapshot()  # what the stack takes once started; no schedule here
        result["put_object_us_with_state"] = put_latency_us(server.url, "cm-bench-kept")
        started = time.perf_counter()
        build_state(server.url, args.cities, args.rows)
        result["build_s"] = time.perf_counter() - started
        result["build_max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        # the SIGKILL case: everything since the first snapshot is in the journal
        crashed = work / "crashed"
        shutil.copytree(state, crashed)
        result["journal_bytes"] = sum(p.stat().st_size for p in crashed.glob("journal-*.log"))
        started = time.perf_counter()
        app.store.snapshot()
        result["snapshot_write_s"] = time.perf_counter() - started
        result["snapshot_bytes"] = (state / "snapshot.pickle").stat().st_size
        app.store.close(snapshot=False)
    finally:
        server.stop()
    result["restore_after_local_down"] = measure_restores(state, args.runs)
    result["restore_after_sigkill_journal_only"] = measure_restores(crashed, args.runs)
    result["machine"]["loadavg_at_end"] = machine()["loadavg_at_start"]
    shutil.rmtree(work, ignore_errors=True)
    out.write(json.dumps(result, indent=2) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
