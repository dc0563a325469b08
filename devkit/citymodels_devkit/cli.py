"""The ``citymodels`` command line.

``gen-data`` runs on this machine alone; ``demo`` starts its own local stack. The operator
commands (``onboard``, ``status``, ``predict``, ``models``, ``rollback``, ``remove``,
``keys``, ``access``, ``metrics``, ``images``, ``cleanup``) work on a stack, on AWS or the
local stack, found through its outputs (:mod:`citymodels_devkit.stack`); what they do is
in :mod:`citymodels_devkit.operations` (and :mod:`citymodels_devkit.metrics`), and this
module only parses and renders: a table for a person, or JSON with ``--json``. ``docs/cli.md`` is the reference.

Exit status: 0 done; 1 the operation ran but did not succeed (a run was not published,
the API failed, a wait timed out); 2 a mistake to fix (a bad city id, an unknown
version, a missing file or stack, AWS refusing), always as one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from citymodels_devkit.paths import state_dir

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress
    from rich.text import Text

    from citymodels.registry import Run
    from citymodels.validation import ValidationReport
    from citymodels_devkit.stack import Stack

API_KEY_ENV = "CITYMODELS_API_KEY"
DEFAULT_METRICS_MINUTES = 30.0


def _gen_data(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from citymodels.validation import DEFAULT_LIMITS
    from citymodels_devkit.datagen import write_dataset

    console = Console(stderr=True, highlight=False)
    if args.rows < DEFAULT_LIMITS.min_rows:
        console.print(
            _text(
                f"warning: --rows {args.rows} is under the {DEFAULT_LIMITS.min_rows} rows an "
                "upload needs: the stack will reject every one of these files",
                "yellow",
            )
        )
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("generating cities", total=args.cities)
        summary = write_dataset(
            args.out or state_dir() / "data",
            args.cities,
            args.rows,
            seed=args.seed,
            noise=args.noise,
            header=args.header,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    if args.json:
        _print_json(
            {
                "out_dir": str(summary.out_dir),
                "cities": list(summary.cities),
                "rows": summary.rows,
                "seed": summary.seed,
                "noise": summary.noise,
                "files": [str(p) for p in summary.csv_paths],
                "ground_truth": str(summary.ground_truth_path),
                "bytes": summary.total_bytes,
            }
        )
        return 0
    console.print(
        _text(
            f"wrote {len(summary.cities)} cities x {summary.rows} rows "
            f"({summary.total_bytes / 1e6:.1f} MB) to {summary.out_dir}/ "
            f"and the ground truth to {summary.ground_truth_path}"
        )
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from citymodels_devkit.demo import DemoOptions, run_demo

    run_demo(
        DemoOptions(
            work_dir=args.work_dir or state_dir() / "demo",
            cities=args.cities,
            rows=args.rows,
            seed=args.seed,
            noise=args.noise,
            copies=args.copies,
            keep_running=args.keep_running,
        )
    )
    return 0


# -- rendering -------------------------------------------------------------------------


def _out() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


def _err() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _progress(*columns: Any) -> Progress:
    """A progress bar on stderr, shown only on a terminal (a log gets the result only)."""
    from rich.progress import BarColumn, Progress

    console = _err()
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        *columns,
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def _esc(text: str) -> str:
    """Text for a spinner or progress label, where rich reads ``[...]`` as markup."""
    from rich.markup import escape

    return escape(text)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _text(value: object, style: str = "") -> Text:
    """User data as literal text (a reason like ``[Errno 2]`` is not rich markup)."""
    from rich.text import Text

    return Text("" if value is None else str(value), style=style)


VERSION_WIDTH = 52
"""Characters in a version id: its column never folds one (they are copied into commands)."""


def _table(*columns: str, title: str | None = None, ids: Sequence[str] = ()) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for column in columns:
        if column in ids:
            table.add_column(column, min_width=VERSION_WIDTH, no_wrap=True)
        elif column in _SHORT:
            table.add_column(column, no_wrap=True)
        else:
            table.add_column(column, overflow="fold")
    return table


_SHORT = frozenset(
    {"uploaded", "at", "published", "created", "time", "status", "attempt", "metrics", "file"}
)
"""Columns of short values (times, statuses, one metric a line) that read badly wrapped."""


def _when(iso: str | None) -> str:
    """``2026-11-25T01:00:00.123Z`` → ``2026-11-25 01:00`` (UTC)."""
    return (iso or "")[:16].replace("T", " ")


def _file(key: str | None) -> str:
    """An upload's file name: its key without ``raw/{city}/`` (shown next to the city)."""
    return (key or "").split("/", 2)[-1]


TABLE_METRICS = (
    ("test:mae", "gate:candidate_mae", "test:absolute_loss"),  # one MAE: the same number
    ("test:rmse",),
    ("test:r2",),
)
"""What a table shows of a run's metrics: the first present of each group (``--json``
has them all)."""


def _metrics(metrics: dict[str, float] | None, separator: str = "\n") -> str:
    """``test:rmse=5,690`` for the table's metrics, one per line in a table cell."""

    def fmt(value: float) -> str:
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"

    metrics = metrics or {}
    names = [
        present[0] for group in TABLE_METRICS if (present := [n for n in group if n in metrics])
    ]
    names = names or sorted(metrics)[:3]
    return separator.join(f"{name}={fmt(metrics[name])}" for name in names)


_STATUS_STYLE = {
    "PUBLISHED": "green",
    "DUPLICATE": "cyan",
    "PROCESSING": "yellow",
    "TRAINING": "yellow",
    "NOT_PUBLISHED": "magenta",
    "REJECTED": "red",
    "FAILED": "red",
}


def _status_text(status: str | None) -> Text:
    return _text(status or "", _STATUS_STYLE.get(status or "", ""))


def _stack_flags(args: argparse.Namespace) -> str:
    """The options that found this stack, to repeat in a suggested command."""
    flags: list[str] = []
    if args.stack_name:
        flags += ["--stack-name", args.stack_name]
    if args.outputs:
        flags += ["--outputs", str(args.outputs)]
    if args.region:
        flags += ["--region", args.region]
    if args.endpoint_url:
        flags += ["--endpoint-url", args.endpoint_url]
    return (" " + shlex.join(flags)) if flags else ""


def _stack(args: argparse.Namespace) -> Stack:
    from citymodels_devkit.stack import Stack, StackError

    if args.stack_name and args.outputs:
        raise StackError("give --stack-name or --outputs, not both", field="outputs")

    return Stack(
        stack_name=args.stack_name,
        outputs_file=args.outputs,
        region=args.region,
        endpoint_url=args.endpoint_url,
    )


# -- onboard ---------------------------------------------------------------------------


def _render_report(report: ValidationReport, path: Path, limit: int = 20) -> None:
    console = _out()
    console.print(_text(f"{path}: {report.summary()}", "red"))
    if not report.problems:
        return
    table = _table("line", "column", "problem")
    for problem in report.problems[:limit]:
        table.add_row(
            _text(problem.line or ""), _text(problem.column or ""), _text(problem.message)
        )
    console.print(table)
    listed = min(limit, len(report.problems))
    unlisted = sum(report.problem_counts.values()) - listed  # counts include the unlisted
    if unlisted > 0:
        counts = ", ".join(f"{code}: {n}" for code, n in sorted(report.problem_counts.items()))
        console.print(_text(f"... and {unlisted:,} more ({counts})"))


def _onboard(args: argparse.Namespace) -> int:
    from rich.progress import DownloadColumn, TransferSpeedColumn

    from citymodels.errors import InvalidUpload
    from citymodels_devkit import operations

    path: Path = args.file
    key = operations.upload_key(args.city, path)  # the city id and file name, first
    report = None
    if args.check:
        with _err().status(_esc(f"checking {path.name}")):
            report = operations.check_upload(path)
        if not report.ok:
            if args.json:
                _print_json({"city": args.city, "file": str(path), "check": report.to_dict()})
            else:
                _render_report(report, path)
            raise InvalidUpload(f"{path.name} was not uploaded: {report.summary()}", report)
    stack = _stack(args)
    bucket = stack.outputs.data_bucket
    key = operations.upload_key(args.city, path, stack.outputs.raw_prefix)
    registry = stack.registry() if args.wait else None
    known = operations.runs_of_key(registry, args.city, key) if registry is not None else set()
    with _progress(DownloadColumn(), TransferSpeedColumn()) as progress:
        task = progress.add_task(_esc(f"uploading {path.name}"), total=path.stat().st_size)
        upload = operations.onboard(
            stack.client("s3"),
            bucket,
            args.city,
            path,
            check=False,
            report=report,
            progress=lambda sent: progress.advance(task, sent),
            prefix=stack.outputs.raw_prefix,
        )
    follow = f"citymodels status {args.city}{_stack_flags(args)}"
    if not args.json:
        checked = f"{report.rows_valid:,} rows, checked" if report else "not checked"
        _out().print(_text(f"uploaded {path} to s3://{bucket}/{upload.key} ({checked})"))
    if registry is None:
        if args.json:
            _print_json({**upload.to_dict(), "follow": follow})
        else:
            _out().print(_text(f"follow its progress: {follow}"))
        return 0
    run = _wait(args, registry, key, known)
    if args.json:
        _print_json({**upload.to_dict(), "run": run.to_dict()})
    else:
        _render_run(run)
    return 0 if run.status in operations.SUCCESSFUL else 1


def _wait(args: argparse.Namespace, registry: Any, key: str, known: set[str]) -> Run:
    from citymodels_devkit import operations

    with _err().status("waiting for the upload to be recorded") as spinner:

        def update(run: Run | None) -> None:
            if run is not None:
                attempt = f", attempt {run.attempt}" if run.attempt else ""
                spinner.update(_esc(f"run {run.run}: {run.status}{attempt} {run.reason}".strip()))

        return operations.wait_for_run(
            registry,
            args.city,
            key,
            known=known,
            timeout=args.timeout,
            interval=args.interval,
            on_update=update,
        )


def _render_run(run: Run) -> None:
    from rich.text import Text

    line = Text.assemble(f"run {run.run}: ", _status_text(run.status))
    if run.duplicate_of:
        line.append(f" (same content as version {run.duplicate_of})")
    if run.reason:
        reason = run.reason
        said = f"{run.status.lower()}: "
        if reason.lower().startswith(said):  # "REJECTED: rejected: ..." says it twice
            reason = reason[len(said) :]
        line.append(f": {reason}")
    console = _out()
    console.print(line)
    if run.metrics:
        console.print(_text(f"metrics: {_metrics(run.metrics, ', ')}"))


# -- status ----------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    from citymodels_devkit import operations

    stack = _stack(args)
    registry = stack.registry()
    data: dict[str, Any]
    if args.city:
        data = operations.city_detail(registry, args.city)
    else:
        cities, last = operations.cities_overview(registry, limit=args.limit, after=args.after)
        data = {"cities": cities, "next_after": last}
        data["runs"] = operations.run_counts(registry, stuck_after_seconds=args.stuck_after)
        bucket = stack.outputs.get("DataBucket")
        if bucket:
            data["rejected_keys"] = operations.rejected_keys(stack.client("s3"), bucket)
    queue_url = stack.outputs.get("FailureQueueUrl")
    if queue_url:
        data["failure_queue"] = operations.failure_queue(stack.client("sqs"), queue_url)
    if args.json:
        _print_json(data)
        return 0
    if args.city:
        _render_city(data, _stack_flags(args))
    else:
        _render_cities(data["cities"], _stack_flags(args))
        if last is not None:
            _err().print(
                _text(f"more cities: citymodels status --after {last}{_stack_flags(args)}"),
                soft_wrap=True,
            )
        _render_run_counts(data["runs"])
    if "rejected_keys" in data:
        _render_rejected_keys(data["rejected_keys"], _stack_flags(args))
    if "failure_queue" in data:
        _render_failures(data["failure_queue"])
    return 0


def _serving(city: dict[str, Any]) -> Text:
    if city["removed"]:
        return _text("removed", "red")
    if not city["current_version"]:
        return _text("not serving", "dim")
    return _text(city["current_version"] + (" (pinned)" if city["pinned"] else ""), "green")


def _narrow(console: Any) -> bool:
    """Too narrow for a table that keeps version ids whole (80 columns is)."""
    return bool(console.width < VERSION_WIDTH + 60)


def _render_cities(cities: list[dict[str, Any]], flags: str) -> None:
    console = _out()
    if not cities:
        console.print(
            _text(f"no cities yet: upload one with citymodels onboard CITY FILE.csv{flags}")
        )
        return
    if _narrow(console):
        # one block per city: its newest upload on the first line, then what it serves
        for city in cities:
            newest = city["newest_upload"] or {}
            uploads = f"{city['uploads']} upload" + ("s" if city["uploads"] != 1 else "")
            line = _text(city["city"], "bold")
            line.append("  ")
            line.append_text(_status_text(newest.get("status")))
            line.append(f"  {_when(newest.get('created_at'))}  {_file(newest.get('key'))}")
            line.append(f"  ({uploads})", "dim")
            console.print(line, soft_wrap=True)
            serving = _text("  serving ")
            serving.append_text(_serving(city))
            console.print(serving, soft_wrap=True)
            if city["current_version"]:
                console.print(_text("  " + _metrics(city["metrics"], ", ")), soft_wrap=True)
        return
    table = _table(
        "city", "serving", "metrics", "uploads", "newest upload", "status", "at", ids=["serving"]
    )
    for city in cities:
        newest = city["newest_upload"] or {}
        table.add_row(
            _text(city["city"]),
            _serving(city),
            _text(_metrics(city["metrics"]) if city["current_version"] else ""),
            _text(city["uploads"]),
            _text(_file(newest.get("key"))),
            _status_text(newest.get("status")),
            _text(_when(newest.get("created_at"))),
        )
    console.print(table)


def _render_run_counts(counts: dict[str, Any]) -> None:
    bound = counts["stuck_after_seconds"] / 60
    line = _text(f"runs: {counts['in_flight']} in flight, ")
    line.append(f"{counts['stuck']} stuck", "red" if counts["stuck"] else "")
    line.append(f" (in flight over {bound:g} min), ")
    line.append(f"{counts['failed']} failed", "red" if counts["failed"] else "")
    _out().print(line, soft_wrap=True)
    if counts["stuck"]:
        _out().print(
            _text(
                "  the reconcile function moves stuck runs on, or fails them with a reason, "
                "on its next sweep (template parameter ReconcileRate)"
            ),
            soft_wrap=True,
        )


def _render_rejected_keys(rejected: dict[str, Any], flags: str) -> None:
    if not rejected["count"]:
        return
    console = _out()
    console.print(
        _text(
            f"{rejected['count']} upload(s) rejected before reaching a city (a key naming no "
            "valid city, or not a .csv), newest first:",
            "red",
        )
    )
    table = _table("time", "key", "reason")
    for item in rejected["peek"]:
        table.add_row(_text(_when(item["time"])), _text(item["key"]), _text(item["reason"]))
    console.print(table)
    newest = rejected["peek"][0]["report"]
    print(f"full report: citymodels report {newest}{flags}")  # one line to copy


def _render_city(city: dict[str, Any], flags: str = "") -> None:
    from rich.text import Text

    console = _out()
    console.print(Text.assemble(f"{city['city']}: ", _serving(city)), soft_wrap=True)
    if _narrow(console):
        # one block per upload, newest first: the run id whole on a line of its own
        for run in city["uploads"]:
            line = _text(_when(run.get("created_at")))
            line.append(f"  {_file(run.get('key'))}  ")
            line.append_text(_status_text(run["status"]))
            if run.get("attempt"):
                line.append(f"  attempt {run['attempt']}")
            console.print(line, soft_wrap=True)
            console.print(_text(f"  run {run['run']}"), soft_wrap=True)
            for extra in (_metrics(run.get("metrics"), ", "), run.get("reason", "")):
                if extra:
                    console.print(_text(f"  {extra}"))
    else:
        table = _table(
            "uploaded", "file", "run", "status", "attempt", "metrics", "reason", ids=["run"]
        )
        for run in city["uploads"]:
            table.add_row(
                _text(_when(run.get("created_at"))),
                _text(_file(run.get("key"))),
                _text(run["run"]),
                _status_text(run["status"]),
                _text(run.get("attempt", "")),
                _text(_metrics(run.get("metrics"))),
                _text(run.get("reason", "")),
            )
        console.print(table)
    reported = [r for r in city["uploads"] if r.get("report_key") and r["status"] == "REJECTED"]
    if reported:
        # the reason is a summary; the report lists the bad rows (the first 100) and counts
        print(
            f"full report of the newest rejection: citymodels report {reported[0]['report_key']}{flags}"
        )


def _render_failures(queue: dict[str, Any]) -> None:
    console = _out()
    if not queue["waiting"] and not queue["in_flight"]:
        console.print(_text("failure queue: empty"))
        return
    console.print(
        _text(
            f"failure queue: {queue['waiting']} message(s) waiting"
            + (f", {queue['in_flight']} in flight" if queue["in_flight"] else "")
            + f" ({queue['queue_url']})",
            "red",
        )
    )
    if queue["peek"]:
        table = _table("time", "function", "error", "event")
        for message in queue["peek"]:
            table.add_row(
                _text(_when(message.get("time"))),
                _text(message.get("function", "")),
                _text(message.get("error", "")),
                _text(message.get("event", "")),
            )
        console.print(table)


def _report(args: argparse.Namespace) -> int:
    from citymodels_devkit import operations

    stack = _stack(args)
    report = operations.read_report(stack.client("s3"), stack.outputs.data_bucket, args.key)
    if args.json:
        _print_json(report)
        return 0
    console = _out()
    console.print(_text(f"{args.key}: {report.get('summary', '')}"))
    if report.get("key"):
        console.print(_text(f"upload: {report['key']}"))
    problems = [*report.get("file_problems", []), *report.get("row_problems", [])]
    if problems:
        table = _table("line", "column", "problem")
        for problem in problems:
            table.add_row(
                _text(problem.get("line", "")),
                _text(problem.get("column", "")),
                _text(problem.get("message", "")),
            )
        console.print(table)
    if report.get("row_problems_not_listed"):
        counts = ", ".join(f"{c}: {n:,}" for c, n in report.get("problem_counts", {}).items())
        console.print(
            _text(f"... and {report['row_problems_not_listed']:,} more not listed ({counts})")
        )
    return 0


# -- models, rollback, remove ----------------------------------------------------------


def _models(args: argparse.Namespace) -> int:
    from citymodels_devkit import operations

    data = operations.city_versions(_stack(args).registry(), args.city)
    if args.json:
        _print_json(data)
        return 0
    console = _out()
    if not data["versions"]:
        console.print(_text(f"{data['city']} has no published version yet"))
        return 0

    def marker(version: dict[str, Any]) -> str:
        if not version["current"]:
            return ""
        return "current (pinned)" if data["pinned"] else "current"

    if _narrow(console):
        # too narrow for a table that keeps version ids whole: one block per version
        console.print(_text(data["city"], "italic"))
        for version in data["versions"]:
            line = _text(version["version"])
            if marker(version):
                line.append(f"  {marker(version)}", "green")
            console.print(line, soft_wrap=True)
            details = [_when(version["published_at"]), _metrics(version["metrics"], ", ")]
            console.print(_text("  published " + ", ".join(d for d in details if d)))
    else:
        table = _table("version", "published", "metrics", "", title=data["city"], ids=["version"])
        for version in data["versions"]:
            table.add_row(
                _text(version["version"]),
                _text(_when(version["published_at"])),
                _text(_metrics(version["metrics"])),
                _text(marker(version), "green"),
            )
        console.print(table)
    if data["removed"]:
        console.print(_text("removed: no version is served", "red"))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from citymodels_devkit import operations

    stack = _stack(args)
    data = operations.rollback(
        stack.registry(), args.city, args.version, cutover_seconds=stack.outputs.cutover_seconds
    )
    if args.json:
        _print_json(data)
        return 0
    when = f" from {data['cutover_at']}" if data.get("cutover_at") else ""
    _out().print(
        _text(
            f"{data['city']} serves {data['current_version']}{when} (pinned; the next newer "
            "upload publishes as usual)"
        )
    )
    return 0


def _remove(args: argparse.Namespace) -> int:
    from citymodels_devkit import operations

    data = operations.remove(_stack(args).registry(), args.city)
    note = (
        "removed: the API answers 404 for it once the predict function's alias cache "
        "expires (the template's AliasCacheSeconds, 5 s by default); its uploads, runs and "
        "models are kept (the data is not deleted). "
        f"citymodels rollback {data['city']} VERSION, or a new upload, serves it again."
    )
    if args.json:
        _print_json({**data, "note": note})
        return 0
    _out().print(_text(f"{data['city']}: {note}"))
    return 0


# -- keys ------------------------------------------------------------------------------

_SECRET_WARNING = (
    "This secret is shown once: only its hash is stored. Keep it now (e.g. in a secret "
    f"manager); clients send it as 'Authorization: Bearer <secret>' ({API_KEY_ENV} for "
    "citymodels predict)."
)


def _keys_create(args: argparse.Namespace) -> int:
    from citymodels_devkit import operations

    secret, key = operations.create_key(
        _stack(args).registry(), args.cities, admin=args.admin, description=args.description
    )
    if args.json:
        _print_json({"secret": secret, "key": key.to_dict(), "warning": _SECRET_WARNING})
        return 0
    console = _out()
    console.print(
        _text(
            f"created key {key.key_id} for {', '.join(key.cities)}"
            + (" (admin)" if key.admin else "")
        )
    )
    console.print(_text(f"secret: {secret}", "bold"))
    _err().print(_text(_SECRET_WARNING, "yellow"))
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    keys = _stack(args).registry().list_keys()
    if args.json:
        _print_json([key.to_dict() for key in keys])
        return 0
    if not keys:
        _out().print(_text("no API keys yet: citymodels keys create --cities PATTERNS"))
        return 0
    table = _table("key id", "cities", "admin", "state", "description", "created")
    for key in keys:
        table.add_row(
            _text(key.key_id),
            _text(", ".join(key.cities)),
            _text("admin" if key.admin else ""),
            _text("revoked", "red") if key.revoked else _text("active", "green"),
            _text(key.description),
            _text(_when(key.created_at)),
        )
    _out().print(table)
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    key = _stack(args).registry().revoke_key(args.key_id)
    if args.json:
        _print_json(key.to_dict())
        return 0
    _out().print(
        _text(
            f"revoked key {key.key_id} ({', '.join(key.cities)}); the API may accept it for "
            "up to its authorizer cache TTL"
        )
    )
    return 0


# -- access policy (notebook section 9) ------------------------------------------------


def _access_policy(args: argparse.Namespace) -> int:
    from citymodels_devkit import operations
    from citymodels_devkit.stack import LOCAL_REGION

    patterns = operations.split_patterns(args.cities)  # a typo is reported first
    arn = args.endpoint_arn
    if not arn:
        stack = _stack(args)
        name = stack.outputs.endpoint_name
        region = stack.region_name or (LOCAL_REGION if stack.is_local else None)
        if not region:
            raise operations.UsageError("no AWS region: pass --region or set AWS_DEFAULT_REGION")
        if args.account:
            try:
                partition = stack.session.get_partition_for_region(region)
            except Exception:  # an unknown region: botocore has no partition for it
                partition = "aws"
            account = args.account
        else:
            account, partition = operations.caller_account(stack.client("sts"))
        arn = operations.endpoint_arn(
            partition=partition, region=region, account=account, endpoint_name=name
        )
    policy = operations.access_policy(patterns, arn)
    _print_json(policy)
    if not args.json:
        targets = policy["Statement"][0]["Condition"]["StringLike"]["sagemaker:TargetModel"]
        _err().print(
            _text(
                f"IAM policy: sagemaker:InvokeEndpoint on {arn} only for TargetModel "
                f"{', '.join(targets)}; attach it to the caller's role or user.",
                "dim",
            )
        )
    return 0


# -- images ----------------------------------------------------------------------------


def _images(args: argparse.Namespace) -> int:
    from citymodels_devkit.images import lookup_images
    from citymodels_devkit.operations import UsageError

    region = args.region
    if not region:
        from citymodels_devkit.stack import new_session

        region = new_session().region_name or os.environ.get("AWS_REGION")
    if not region:
        raise UsageError("no region: pass --region REGION (the stack's)", field="region")
    with _err().status("looking up images"):
        images = lookup_images(region, args.sklearn_version)
    if args.json:
        _print_json(images.to_dict())
        return 0
    # print() not rich: URIs to copy, never folded mid-word whatever the terminal's width
    print(f"images in {region}")
    print(f"  scikit-learn {images.sklearn_version}: {images.sklearn}")
    print(f"  linear-learner: {images.linear_learner}")
    print()
    print(f"sam deploy --parameter-overrides {images.parameter_overrides}")
    return 0


# -- cleanup (notebook section 10) -----------------------------------------------------


def _cleanup(args: argparse.Namespace) -> int:
    from rich.progress import MofNCompleteColumn, TimeElapsedColumn
    from rich.prompt import Prompt

    from citymodels_devkit import operations

    stack = _stack(args)
    bucket = stack.outputs.data_bucket
    if not args.yes:
        if not sys.stdin.isatty():
            raise operations.UsageError(
                f"refusing to delete every object version in {bucket} without --yes "
                "(no terminal to confirm on)"
            )
        answer = Prompt.ask(
            f"Permanently delete every object, version and delete marker in {bucket}? "
            "Type the bucket name to confirm",
            console=_err(),
        )
        if answer.strip() != bucket:
            _err().print("not confirmed: nothing deleted")
            return 1
    s3 = stack.client("s3")
    with _err().status(f"counting object versions in {bucket}"):
        total = operations.count_object_versions(s3, bucket)
    with _progress(MofNCompleteColumn(), TimeElapsedColumn()) as progress:
        task = progress.add_task(f"emptying {bucket}", total=total)
        deleted = operations.empty_bucket(
            s3, bucket, on_deleted=lambda n: progress.advance(task, n)
        )
    steps = operations.cleanup_next_steps(
        bucket,
        stack_name=args.stack_name,
        region=args.region,
        local=stack.is_local,
        cleanup_command=f"citymodels cleanup --yes{_stack_flags(args)}",
    )
    if args.json:
        _print_json({"bucket": bucket, "deleted": deleted, "next_steps": steps})
        return 0
    console = _out()
    console.print(_text(f"emptied {bucket}: deleted {deleted:,} object version(s) and marker(s)"))
    console.print("next:")
    for step in steps:
        print(f"  {step}")
    return 0


# -- metrics (notebook section 8) -----------------------------------------------------


def _metric_value(value: float, statistic: str, unit: str) -> str:
    """A metric's value for a table: counts as counts, microseconds as ms, percents as %."""
    if statistic in ("Sum", "SampleCount") and unit != "Percent":
        return f"{value:,.0f}"
    if unit == "Microseconds":
        return f"{value / 1000:,.2f} ms"
    if unit == "Percent":
        return f"{value:.1f} %"
    return f"{value:,.4g}"


def _metrics_command(args: argparse.Namespace) -> int:
    import dataclasses
    import math
    from datetime import UTC, datetime, timedelta

    from citymodels_devkit import operations
    from citymodels_devkit.metrics import (
        MME_METRICS,
        default_period,
        read_endpoint_metrics,
        variants_with_metrics,
    )
    from citymodels_devkit.plots import write_charts

    fit_to_data = args.since is None  # default: up to 30 minutes, from the first datapoint
    since = DEFAULT_METRICS_MINUTES if args.since is None else args.since
    if since <= 0:
        raise operations.UsageError("--since must be a positive number of minutes", field="since")
    if args.period is not None and args.period < 1:
        raise operations.UsageError("--period must be at least 1 second", field="period")
    stack = _stack(args)
    endpoint = stack.outputs.endpoint_name
    period = args.period or default_period(local=stack.is_local)
    end = datetime.now(UTC)
    start = end - timedelta(minutes=since)
    with _err().status(_esc(f"reading {endpoint}'s metrics from CloudWatch")):
        metrics = read_endpoint_metrics(
            stack.client("cloudwatch"),
            endpoint,
            start=start,
            end=end,
            period=period,
            variant_name=args.variant,
        )
    if metrics.empty:
        variants = variants_with_metrics(stack.client("cloudwatch"), endpoint)
        if variants and args.variant not in variants:
            raise operations.UsageError(
                f"endpoint {endpoint} has no metrics for variant {args.variant!r}: its "
                f"variants with metrics are {', '.join(sorted(variants))} (--variant NAME)",
                field="variant",
            )
        raise operations.OperationFailed(
            f"no metrics for endpoint {endpoint} ({args.variant}) in the last {since:g} "
            "minutes: the endpoint publishes them when it is invoked (on AWS every minute, "
            "a few minutes late); try a larger --since"
        )
    if fit_to_data:
        first = min(s.timestamps[0] for s in metrics.series.values() if len(s))
        metrics = dataclasses.replace(metrics, start=max(metrics.start, first))
    charts = write_charts(metrics, Path(args.out or state_dir() / "charts"))
    if args.json:
        _print_json({**metrics.to_dict(), "charts": [str(p) for p in charts]})
        return 0
    periods = max((len(series) for series in metrics.series.values()), default=0)
    table = _table(
        "metric", "statistic", "max", "last", "total",
        title=f"{endpoint} / {args.variant}: from {metrics.start:%H:%M:%S} to "
        f"{metrics.end:%H:%M:%S} UTC, period {period} s "
        f"({periods} periods with data)",
    )  # fmt: skip
    for query in MME_METRICS:
        series = metrics[query.name]
        if not len(series):
            continue
        statistic = query.statistics[0]
        values = [v for v in series.values(statistic) if not math.isnan(v)]
        table.add_row(
            _text(query.name),
            _text(statistic),
            _text(_metric_value(max(values), statistic, query.unit)),
            _text(_metric_value(values[-1], statistic, query.unit)),
            _text(
                _metric_value(sum(values), statistic, query.unit)
                if statistic in ("Sum", "SampleCount")
                else ""
            ),
        )
    for column in table.columns[2:]:
        column.justify = "right"
    console = _out()
    console.print(table)
    ratio = metrics.cache_hit_ratio()
    if ratio is not None:
        console.print(_text(f"ModelCacheHit over the range: {ratio:.3f} (hits / invocations)"))
    for path in charts:
        print(f"chart: {path}")  # print() not rich: one unbroken line to copy
    return 0


# -- predict ---------------------------------------------------------------------------


def _predict(args: argparse.Namespace) -> int:
    from citymodels.cities import validate_city_id
    from citymodels_devkit import operations

    validate_city_id(args.city)
    given = [bool(args.pairs), args.json_file is not None, args.csv_file is not None]
    if sum(given) != 1:
        raise operations.UsageError(
            "give the houses one way: KEY=VALUE pairs, --json-file FILE or --csv-file FILE",
            field="rows",
        )
    if args.json_file is not None:
        rows = operations.rows_from_json(args.json_file)
    elif args.csv_file is not None:
        rows = operations.rows_from_csv(args.csv_file)
    else:
        rows = operations.rows_from_pairs(args.pairs)
    outputs = _stack(args).outputs
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or outputs.get("AdminApiKey") or ""
    priced = operations.predict(outputs.api_url, api_key, args.city, rows, timeout=args.timeout)
    if args.json:
        _print_json(priced.to_dict())
        return 0
    with_actual = any(a is not None for a in priced.actual)
    table = _table("#", "house", "price", *(["actual"] if with_actual else []))
    for i, (instance, price, actual) in enumerate(
        zip(rows.instances, priced.prices, priced.actual, strict=True), 1
    ):
        house = (
            f"{instance['SQUARE_FEET']:,} ft², {instance['NUM_BEDROOMS']} bd, "
            f"{instance['NUM_BATHROOMS']} ba, built {instance['YEAR_BUILT']}"
        )
        cells = [_text(i), _text(house), _text(f"${price:,.0f}")]
        if with_actual:
            cells.append(_text(f"${actual:,.0f}" if actual is not None else ""))
        table.add_row(*cells)
    for column in table.columns[2:]:
        column.justify = "right"
    console = _out()
    console.print(table)
    latency = ", ".join(f"{ms:,.1f} ms" for ms in priced.latency_ms)
    console.print(
        _text(
            f"{priced.city} model version {', '.join(sorted(set(priced.model_versions)))}; "
            f"latency {latency}"
        )
    )
    return 0


# -- the parser ------------------------------------------------------------------------


def _add_stack_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Add the options of every command that works on a stack.

    They are accepted before the command (``citymodels --json status``) and after it
    (``citymodels status --json``). After it they default to ``SUPPRESS``: a subcommand's
    defaults would otherwise overwrite what was given before it.
    """
    default: Any = argparse.SUPPRESS if suppress else None
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--stack-name",
        metavar="NAME",
        default=default,
        help="a deployed stack (its CloudFormation Outputs)",
    )
    which.add_argument(
        "--outputs",
        metavar="FILE",
        type=Path,
        default=default,
        help="a JSON file of the stack's outputs (default: $CITYMODELS_OUTPUTS, "
        "else .citymodels/outputs.json as citymodels local up writes it)",
    )
    parser.add_argument(
        "--region",
        default=default,
        help="AWS region (default: boto3's, e.g. AWS_DEFAULT_REGION, else AWS_REGION)",
    )
    parser.add_argument(
        "--endpoint-url",
        metavar="URL",
        default=default,
        help="send AWS calls here (default: AWS_ENDPOINT_URL, else the outputs' AwsEndpointUrl)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="print JSON instead of tables",
    )


def _stack_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    _add_stack_options(parent, suppress=True)
    return parent


def _add_operator_commands(commands: Any) -> None:
    stack = [_stack_options()]

    def command(name: str, handler: Callable[[argparse.Namespace], int], **kw: Any) -> Any:
        sub = commands.add_parser(name, parents=stack, **kw)
        sub.set_defaults(handler=handler, command_name=name)
        return sub

    onboard = command(
        "onboard",
        _onboard,
        help="check a city's CSV locally, then upload it (the city's model follows)",
        description=(
            "Check FILE as the onboard function will (streaming; a bad file is reported "
            "with its rows and reasons and not uploaded), then upload it to "
            "raw/CITY/<file name> in the DataBucket. The upload starts processing, "
            "training and publishing; follow it with citymodels status CITY, or --wait."
        ),
    )
    onboard.add_argument("city", metavar="CITY", help="city id, e.g. NewYork_NY")
    onboard.add_argument("file", metavar="FILE", type=Path, help="the city's raw CSV (.csv)")
    onboard.add_argument(
        "--no-check", dest="check", action="store_false", help="upload without checking first"
    )
    onboard.add_argument(
        "--wait",
        action="store_true",
        help="wait until the upload's run is final (exit 0 if PUBLISHED or DUPLICATE, else 1)",
    )
    onboard.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="how long --wait waits (default 1800)",
    )
    onboard.add_argument(
        "--interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how often --wait polls the registry (default 5)",
    )

    status = command(
        "status",
        _status,
        help="cities and their uploads, stuck and failed runs, and the failure queue",
        description=(
            "Without CITY: the cities a page at a time in id order (--limit, --after), the "
            "version each serves and its newest upload, and how many runs are in flight, "
            "stuck (in flight longer than --stuck-after) and failed. With CITY: its uploads newest first (key, run, status, reason, "
            "attempt, metrics). Also the messages waiting in the failure queue when the "
            "stack has one (output FailureQueueUrl); looking does not remove them."
        ),
    )
    status.add_argument("city", metavar="CITY", nargs="?", help="one city's uploads")
    status.add_argument(
        "--limit",
        type=_page_size,
        default=50,
        metavar="N",
        help="cities per page, 1-1000 (default 50)",
    )
    status.add_argument(
        "--after",
        metavar="CITY",
        help="start after this city (the page before ended with it; status says so)",
    )
    status.add_argument(
        "--stuck-after",
        type=float,
        metavar="SECONDS",
        help="a run in flight longer than this counts as stuck (default: the template's "
        "StuckRunSeconds, 5400)",
    )

    report = command(
        "report",
        _report,
        help="a rejection's or the gate's full report (as citymodels status names it)",
        description=(
            "Print a report the stack wrote in the DataBucket: an upload's validation "
            "(reports/CITY/RUN/validation.json: every file problem and the first 100 bad "
            "rows, with counts of all), the quality gate's, or that of an upload rejected "
            "before reaching a city (reports/_rejected/HASH.json)."
        ),
    )
    report.add_argument("key", metavar="REPORT_KEY", help="the report's key (reports/...)")

    predict = command(
        "predict",
        _predict,
        help="price houses through the HTTP API",
        description=(
            "POST the houses to ApiUrl/cities/CITY/predictions and print the prices, the "
            "model version that answered and the round-trip latency. Give the houses as "
            "KEY=VALUE pairs (one house), --json-file or --csv-file."
        ),
        epilog=(
            "example: citymodels predict NewYork_NY YEAR_BUILT=1995 SQUARE_FEET=2500 "
            "NUM_BEDROOMS=3 NUM_BATHROOMS=2 LOT_ACRES=0.5 GARAGE_SPACES=2 FRONT_PORCH=y DECK=n"
        ),
    )
    predict.add_argument("city", metavar="CITY")
    predict.add_argument("pairs", metavar="KEY=VALUE", nargs="*", help="one house's eight features")
    predict.add_argument(
        "--json-file",
        type=Path,
        metavar="FILE",
        help='houses as JSON: {"instances": [{...}]} or a list of objects (- for stdin)',
    )
    predict.add_argument(
        "--csv-file",
        "--csv",
        type=Path,
        metavar="FILE",
        dest="csv_file",
        help="houses as CSV: a header row, or the raw column order (PRICE optional)",
    )
    predict.add_argument(
        "--api-key",
        metavar="SECRET",
        help=f"the API key (default: ${API_KEY_ENV}, else the local stack's AdminApiKey)",
    )
    predict.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS", help="per request (default 30)"
    )

    models = command(
        "models",
        _models,
        help="a city's published versions",
        description="A city's published versions, newest first, with metrics; marks the one served.",
    )
    models.add_argument("city", metavar="CITY")

    rollback = command(
        "rollback",
        _rollback,
        help="serve an earlier published version of a city",
        description=(
            "Pin the city's alias to an earlier published version (directly in the "
            "registry). The next newer upload publishes as usual."
        ),
    )
    rollback.add_argument("city", metavar="CITY")
    rollback.add_argument("version", metavar="VERSION", help="a version from citymodels models")

    remove = command(
        "remove",
        _remove,
        help="stop serving a city (its data and models are kept)",
        description=(
            "Stop serving a city: the API answers 404 for it. Its uploads, runs and models "
            "are kept; a rollback or a new upload serves it again."
        ),
    )
    remove.add_argument("city", metavar="CITY")

    keys = commands.add_parser(
        "keys",
        help="API keys: create, list, revoke",
        description="API keys of the HTTP API, each limited to city patterns.",
    )
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")

    def key_command(name: str, handler: Callable[[argparse.Namespace], int], **kw: Any) -> Any:
        sub = key_commands.add_parser(name, parents=stack, **kw)
        sub.set_defaults(handler=handler, command_name=f"keys {name}")
        return sub

    create = key_command(
        "create",
        _keys_create,
        help="create a key (its secret is printed once)",
        description="Create an API key for city patterns; the secret is printed once, only its hash is stored.",
    )
    create.add_argument(
        "--cities",
        nargs="+",
        required=True,
        metavar="PATTERN",
        help="city ids, prefixes ending in * (San*), or * (quote them in the shell); "
        "space- or comma-separated",
    )
    create.add_argument(
        "--admin", action="store_true", help="may also roll back cities through the API"
    )
    create.add_argument("--description", default="", help="who or what the key is for")
    key_command("list", _keys_list, help="every key's grants (never the secrets)")
    revoke = key_command("revoke", _keys_revoke, help="revoke a key by id")
    revoke.add_argument("key_id", metavar="KEY_ID")

    access = commands.add_parser(
        "access",
        help="IAM policy for calling the endpoint directly",
        description="Fine-grained access for callers that invoke the endpoint directly.",
    )
    access_commands = access.add_subparsers(dest="access_command", required=True, metavar="COMMAND")
    policy = access_commands.add_parser(
        "policy",
        parents=stack,
        help="print an IAM policy limiting InvokeEndpoint to some cities' models",
        description=(
            "Print the IAM policy (the notebook's section 9) that allows "
            "sagemaker:InvokeEndpoint on the stack's endpoint only with a TargetModel of "
            "the given cities (condition key sagemaker:TargetModel, StringLike CITY/*)."
        ),
    )
    policy.set_defaults(handler=_access_policy, command_name="access policy")
    policy.add_argument("--cities", nargs="+", required=True, metavar="PATTERN")
    policy.add_argument(
        "--endpoint-arn",
        metavar="ARN",
        help="the endpoint's ARN (default: built from the outputs' EndpointName, the region "
        "and the account)",
    )
    policy.add_argument("--account", metavar="ID", help="the account id (default: asked of STS)")

    images = commands.add_parser(
        "images",
        help="the scikit-learn and linear-learner image URIs for a region",
        description=(
            "Look up the two container images a stack needs in REGION with the SageMaker "
            "SDK (the optional sdk extra: pip install -e '.[sdk]') and print them, also "
            "as sam deploy --parameter-overrides."
        ),
    )
    images.set_defaults(handler=_images, command_name="images")
    images.add_argument(
        "--region", default=argparse.SUPPRESS, help="the stack's region (default: boto3's)"
    )
    images.add_argument(
        "--sklearn-version",
        default="1.2-1",
        metavar="VERSION",
        help="scikit-learn framework version (default 1.2-1, Python 3.9)",
    )
    images.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print JSON instead of a table",
    )

    metrics = command(
        "metrics",
        _metrics_command,
        help="chart the endpoint's CloudWatch metrics (the notebook's section 8)",
        description=(
            "Read the multi-model endpoint's metrics from CloudWatch (AWS/SageMaker: "
            "Invocations, ModelCacheHit, ModelLatency, ModelLoading*/Downloading/Unloading "
            "times; /aws/sagemaker/Endpoints: LoadedModelCount, MemoryUtilization, "
            "DiskUtilization; dimensions EndpointName and VariantName), print a summary and "
            "write the notebook's two charts as PNG files."
        ),
    )
    metrics.add_argument(
        "--period",
        type=int,
        default=None,
        metavar="SECONDS",
        help="seconds per datapoint (default: 1 on the local stack, which publishes every "
        "second; 60 on AWS)",
    )
    metrics.add_argument(
        "--since",
        type=float,
        default=None,
        metavar="MINUTES",
        help=f"how far back to read (default {DEFAULT_METRICS_MINUTES:g}, charted from the "
        "first datapoint, so a young stack fills the chart)",
    )
    metrics.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the PNG charts go (default .citymodels/charts in the project's root)",
    )
    metrics.add_argument(
        "--variant", default="AllTraffic", help="the production variant (default AllTraffic)"
    )

    cleanup = command(
        "cleanup",
        _cleanup,
        help="empty the retained, versioned DataBucket before deleting the stack",
        description=(
            "Delete every object version and delete marker in the DataBucket (which sam "
            "delete retains), then print the next steps: sam delete and deleting the "
            "bucket, or citymodels local down for the local stack."
        ),
    )
    cleanup.add_argument(
        "--yes", action="store_true", help="do not ask (required when not on a terminal)"
    )


def _page_size(text: str) -> int:
    """``--limit``: a whole number within a page's bounds (1..1000)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 1000, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``citymodels`` command."""
    parser = argparse.ArgumentParser(
        prog="citymodels",
        description="One house-price model per city on a SageMaker multi-model endpoint.",
    )
    _add_stack_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser(
        "gen-data",
        help="generate synthetic house data, one raw CSV per city",
        description=(
            "Write one raw CSV per city (the notebook's headerless 9-column format; the "
            "notebook's 10 city names first) and ground_truth.json with each city's true "
            "price formula and noise, so errors can be compared with the best achievable."
        ),
    )
    gen.add_argument("--cities", type=int, default=10, help="number of cities (default 10)")
    gen.add_argument("--rows", type=int, default=1000, help="rows per city (default 1000)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gen.add_argument(
        "--noise", type=float, default=10_000.0, help="price noise sigma in dollars (default 10000)"
    )
    gen.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default .citymodels/data in the project's root)",
    )
    gen.add_argument("--header", action="store_true", help="write a header row")
    gen.add_argument("--json", action="store_true", help="print what was written as JSON on stdout")
    gen.set_defaults(handler=_gen_data)

    demo = commands.add_parser(
        "demo",
        help="run the notebook's sections 1-10 on the local stack (what `make demo` runs)",
        description=(
            "Start the local stack in this process and run the notebook's story on it as a "
            "user would: generate cities (§1), drop their CSVs into S3 and follow them "
            "through processing, training and publishing (§2-5), price a house in every "
            "city through the HTTP API against the generator's ground truth (§6), add a "
            "city live (§7), the cache experiment with model copies and its CloudWatch "
            "charts (§8), a key for one city and the sagemaker:TargetModel IAM policy "
            "(§9), a rollback, and clean up (§10). The stack is stopped at the end, also "
            "on errors, unless --keep-running."
        ),
    )
    demo.add_argument(
        "--cities", type=int, default=10, help="cities; the last is added live (default 10)"
    )
    demo.add_argument("--rows", type=int, default=1000, help="rows per city (default 1000)")
    demo.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    demo.add_argument(
        "--noise", type=float, default=10_000.0, help="price noise sigma (default 10000)"
    )
    demo.add_argument(
        "--copies",
        type=int,
        default=200,
        help="model copies in the cache experiment; ~60%% fit in memory (default 200)",
    )
    demo.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where data, the stack's files, charts and logs go; what an earlier demo "
        "wrote there is replaced (default .citymodels/demo in the project's root)",
    )
    demo.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the stack up at the end (Ctrl-C or citymodels local down stops it)",
    )
    demo.set_defaults(handler=_demo)

    _add_operator_commands(commands)
    _add_local_commands(commands)
    return parser


def _local_options(args: argparse.Namespace, work_dir: Path) -> Any:
    from citymodels_devkit.local.stack import LocalOptions

    overrides = {"LogLevel": args.log_level}
    for item in args.parameter or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--parameter takes NAME=VALUE, got {item!r}")
        overrides[name] = value
    return LocalOptions(
        stack_name=args.name,
        host=args.host,
        aws_port=args.aws_port,
        api_port=args.api_port,
        parameter_overrides=overrides,
        work_dir=work_dir,
        mme_max_models=args.mme_max_models,
        mme_max_memory_mb=args.mme_max_memory_mb,
        model_overhead_mb=args.model_overhead_mb,
        job_workers=args.job_workers,
        persist=True,
        fresh=args.fresh,
    )


def _render_outputs(outputs: dict[str, str], path: Path, state: Path) -> None:
    # print() not rich: values are copied (URLs, the key), so never folded mid-word
    print("citymodels local stack")
    width = max(map(len, outputs), default=0)
    for name, value in outputs.items():
        print(f"  {name:<{width}}  {value}")
    print(f"outputs written to {path}")
    print(f"state kept in {state} across restarts (local up --fresh starts empty)")
    print(
        f"point any AWS client at it: export AWS_ENDPOINT_URL={outputs.get('AwsEndpointUrl', '')}"
    )


def _local_up(args: argparse.Namespace) -> int:
    from citymodels_devkit.local.run import StackFiles, run_foreground, start_detached
    from citymodels_devkit.local.stack import LocalStack

    files = StackFiles.of(args.outputs_file)
    outputs_path = files.outputs
    if args.detach:
        argv = [a for a in (args.raw_argv or []) if a != "--detach"]
        outputs = start_detached(argv, files)
        down = "citymodels local down" + (
            f" --outputs-file {shlex.quote(str(args.outputs_file))}" if args.outputs_file else ""
        )
        if args.json:
            _print_json(outputs)
        else:
            _render_outputs(outputs, outputs_path, files.work_dir / "state")
            # print() not rich: paths and a command to copy, never folded mid-word
            print(f"running in the background (log: {files.log}); stop it with: {down}")
        return 0
    stack = LocalStack(
        Path(args.template) if args.template else None, _local_options(args, files.work_dir)
    )

    def ready(outputs: dict[str, str]) -> None:
        if args.json:
            _print_json(outputs)
        else:
            _render_outputs(outputs, outputs_path, files.work_dir / "state")
            _out().print("serving; Ctrl-C stops the stack")

    run_foreground(stack, files, on_ready=ready)
    return 0


def _local_down(args: argparse.Namespace) -> int:
    from citymodels_devkit.local.run import StackFiles, stop_detached

    files = StackFiles.of(args.outputs_file)
    pid = stop_detached(files)
    if args.json:
        _print_json({"stopped": pid, "outputs": str(files.outputs)})
    else:
        _out().print(_text(f"stopped the local stack (pid {pid}, outputs {files.outputs})"))
    return 0


def _add_local_commands(commands: Any) -> None:
    local = commands.add_parser(
        "local",
        help="run the whole application on this machine (no AWS account, no Docker)",
        description=(
            "The local stack: template.yaml's application served on one machine. One AWS "
            "endpoint (moto for S3, EventBridge, DynamoDB, SQS, CloudWatch...; SageMaker jobs "
            "that really run; the multi-model endpoint), the template's functions and event "
            "rules, and its HTTP API with the authorizer."
        ),
    )
    local_commands = local.add_subparsers(dest="local_command", required=True, metavar="COMMAND")
    up = local_commands.add_parser(
        "up",
        help="start the local stack (foreground; --detach for background)",
        description=(
            "Start the local stack, print its outputs and write them as JSON. The stack keeps "
            "its state (S3 objects, the registry, API keys, queued events, jobs) in its work "
            "directory and carries on from it on the next start, even after a crash; "
            "--fresh starts empty."
        ),
    )
    up.add_argument("--template", help="the SAM template (default: the repository's template.yaml)")
    up.add_argument(
        "--name",
        default="citymodels-local",
        help="stack name, as AWS::StackName (default citymodels-local)",
    )
    up.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    up.add_argument(
        "--aws-port", type=int, default=4566, help="the AWS endpoint's port (default 4566)"
    )
    up.add_argument("--api-port", type=int, default=3000, help="the HTTP API's port (default 3000)")
    up.add_argument(
        "--outputs-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="where the outputs JSON goes (default .citymodels/outputs.json in the project's "
        "root); a second stack needs its own, and its own --aws-port and --api-port",
    )
    up.add_argument(
        "--detach",
        action="store_true",
        help="run in the background; stop with `citymodels local down`",
    )
    up.add_argument(
        "--fresh",
        action="store_true",
        help="start empty: delete the state kept from earlier runs (S3 objects, the registry, "
        "keys, queues, jobs); without it the stack carries on where it stopped",
    )
    up.add_argument(
        "--mme-max-models",
        type=int,
        default=None,
        help="models the endpoint keeps in memory (default: no bound)",
    )
    up.add_argument(
        "--mme-max-memory-mb",
        type=float,
        default=None,
        help="MB of models the endpoint keeps in memory",
    )
    up.add_argument(
        "--model-overhead-mb",
        type=float,
        default=0.0,
        help="memory each loaded model stands for (MemoryUtilization)",
    )
    up.add_argument(
        "--job-workers", type=int, default=3, help="processes running SageMaker jobs (default 3)"
    )
    up.add_argument(
        "--log-level", default="WARNING", help="the functions' log level (default WARNING)"
    )
    up.add_argument(
        "--parameter",
        action="append",
        metavar="NAME=VALUE",
        help="a template parameter override (repeatable)",
    )
    up.add_argument("--json", action="store_true", help="print the outputs as JSON")
    up.set_defaults(handler=_local_up, command_name="local up")
    down = local_commands.add_parser(
        "down",
        help="stop a local stack (the one writing .citymodels/outputs.json by default)",
        description=(
            "Stop the local stack whose outputs are in --outputs-file. Its state is kept: "
            "the next `local up` carries on from it (`local up --fresh` starts empty)."
        ),
    )
    down.add_argument(
        "--outputs-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="the stack's outputs file, as given to local up (default .citymodels/outputs.json)",
    )
    down.add_argument("--json", action="store_true", help="print JSON")
    down.set_defaults(handler=_local_down, command_name="local down")


def _explain(err: BaseException) -> tuple[int, str] | None:
    """Return ``(exit status, one line)`` for an error a person can act on, else None."""
    from citymodels.errors import CityModelsError

    local_run = sys.modules.get("citymodels_devkit.local.run")
    if local_run is not None and isinstance(err, local_run.LocalStackError):
        return 1, str(err)
    persistence = sys.modules.get("citymodels_devkit.local.persistence")
    if persistence is not None and isinstance(err, persistence.StateUnreadable):
        return 1, str(err)
    if isinstance(err, CityModelsError):
        from citymodels_devkit.api_client import ApiCallFailed
        from citymodels_devkit.operations import OperationFailed

        if isinstance(err, OperationFailed):
            return 1, err.message
        if isinstance(err, ApiCallFailed):
            return (1 if err.status >= 500 else 2), err.message
        return 2, err.message
    if "botocore" in sys.modules:  # only then can it be an AWS error
        from citymodels_devkit.stack import explain_aws_error

        message = explain_aws_error(err)
        if message is not None:
            return 2, message
    if isinstance(err, OSError) and err.filename is not None:
        return 2, f"{err.strerror or err}: {err.filename}"
    if isinstance(err, (ValueError, OSError)):
        return 2, str(err)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``citymodels`` command; return its exit status."""
    raw = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(raw)
    if getattr(args, "command_name", "") == "local up":
        args.raw_argv = raw[raw.index("up") + 1 :]
    name = getattr(args, "command_name", args.command)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        explained = _explain(err)
        if explained is None:
            raise
        status, message = explained
        print(f"citymodels {name}: error: {' '.join(message.split())}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
