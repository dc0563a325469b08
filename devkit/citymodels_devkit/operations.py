"""What the operator commands do, as plain functions returning data.

The command line (:mod:`citymodels_devkit.cli`) renders what these return either as
JSON (``--json``) or as tables; nothing here prints. AWS clients and the registry are
parameters, so tests and other tools pass their own.

Errors a person can fix (a bad city id, an unknown version, a file that does not
exist, an API that refuses the key) are :class:`citymodels.errors.CityModelsError`\\ s
with a message meant for them; :class:`OperationFailed` says the operation ran but did
not succeed (a run that was not published, a server error).
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from citymodels.auth import target_model_policy, validate_patterns
from citymodels.cities import validate_city_id
from citymodels.errors import CityModelsError, InvalidRecord, InvalidUpload
from citymodels.layout import RAW_PREFIX, raw_key
from citymodels.registry import (
    DUPLICATE,
    FAILED,
    FINAL,
    IN_PROGRESS,
    PUBLISHED,
    ApiKey,
    Registry,
    Run,
)
from citymodels.schema import COLUMNS, FEATURES, FLAG_FEATURES, LABEL, parse_flag, parse_number
from citymodels.validation import ValidationReport, validate_upload
from citymodels_devkit.api_client import ApiCallFailed, ApiClient

S3_DELETE_BATCH = 1000
"""DeleteObjects takes at most 1,000 keys per call."""
API_MAX_ROWS = 1000
"""The HTTP API answers at most 1,000 rows per request (docs/design.md §3)."""
SUCCESSFUL = (PUBLISHED, DUPLICATE)
"""Final statuses after which the city serves the upload's content."""


class UsageError(CityModelsError, ValueError):
    """A mistake in what the user asked for (a file, a value, a missing setting)."""

    code = "usage"


class OperationFailed(CityModelsError):
    """The operation ran but did not succeed (not the caller's mistake)."""

    code = "failed"


# -- onboard ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """An uploaded file: where it went and what the local check found."""

    city: str
    bucket: str
    key: str
    size: int
    report: ValidationReport | None

    def to_dict(self) -> dict[str, Any]:
        """Return the upload as a JSON-ready mapping."""
        return {
            "city": self.city,
            "bucket": self.bucket,
            "key": self.key,
            "size": self.size,
            "check": self.report.to_dict() if self.report is not None else None,
        }


def _existing_file(path: Path) -> int:
    try:
        stat = path.stat()
    except FileNotFoundError as err:
        raise UsageError(f"file {path} not found", field="file") from err
    if not path.is_file():
        raise UsageError(f"{path} is not a file", field="file")
    return stat.st_size


def upload_key(city: str, path: Path, prefix: str = RAW_PREFIX) -> str:
    """Return the key ``path`` is uploaded under for ``city`` (``{prefix}{city}/{name}``;
    ``prefix`` is the stack's ``RawPrefix``)."""
    return raw_key(validate_city_id(city), path.name, prefix=prefix)


def check_upload(path: Path) -> ValidationReport:
    """Validate a local CSV as the onboard function will (streaming, bounded memory)."""
    size = _existing_file(path)
    with path.open("rb") as stream:
        return validate_upload(stream, size=size)


def onboard(
    s3: Any,
    bucket: str,
    city: str,
    path: Path,
    *,
    check: bool = True,
    report: ValidationReport | None = None,
    progress: Callable[[int], None] | None = None,
    prefix: str = RAW_PREFIX,
) -> Upload:
    """Check a city's CSV locally, then upload it to ``{prefix}{city}/{file name}``.

    Parameters
    ----------
    s3
        A boto3 S3 client.
    bucket
        The DataBucket.
    check
        Validate the file first, so a bad file is reported before it is uploaded.
    report
        The file's report when the caller has already checked it (then kept as it is).
    progress
        Called with the bytes sent since the last call.
    prefix
        The stack's ``RawPrefix`` (``raw/`` by default), where its onboard rule listens.

    Raises
    ------
    InvalidCityId, InvalidKey
        The city id is invalid or the file is not a ``.csv``.
    InvalidUpload
        The file failed the check (``report`` says which rows and why); nothing uploaded.
    """
    key = upload_key(city, path, prefix)
    size = _existing_file(path)
    if check and report is None:
        report = check_upload(path)
    if report is not None and not report.ok:
        raise InvalidUpload(f"{path.name} was not uploaded: {report.summary()}", report)
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError

    try:
        s3.upload_file(
            str(path), bucket, key, ExtraArgs={"ContentType": "text/csv"}, Callback=progress
        )
    except S3UploadFailedError as err:
        # boto3 wraps S3's answer in a message; the answer itself says what to fix
        if isinstance(err.__context__, ClientError):
            raise err.__context__ from None
        raise
    return Upload(city=city, bucket=bucket, key=key, size=size, report=report)


def runs_of_key(registry: Registry, city: str, key: str) -> set[str]:
    """Return the ids of the city's runs recorded for uploads to ``key``."""
    try:
        return {run.run for run in registry.list_runs(city) if run.key == key}
    except LookupError:
        return set()


RECORD_TIMEOUT = 60.0
"""Seconds ``--wait`` waits for an upload's run to be recorded at all (the onboard
function records it within seconds of the upload, on AWS as locally)."""


def wait_for_run(
    registry: Registry,
    city: str,
    key: str,
    *,
    known: Iterable[str] = (),
    timeout: float = 1800.0,
    interval: float = 5.0,
    record_timeout: float | None = None,
    on_update: Callable[[Run | None], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Run:
    """Poll the registry until the run of a new upload to ``key`` is final.

    Parameters
    ----------
    known
        Runs of ``key`` that existed before the upload (see :func:`runs_of_key`): the
        new upload's run is the first other one recorded for the key.
    record_timeout
        Give up sooner, after this many seconds (default :data:`RECORD_TIMEOUT`), when
        no run is recorded at all: the stack did not see the upload, and waiting longer
        will not change that.
    on_update
        Called after every poll with the run (None until it is recorded).

    Raises
    ------
    OperationFailed
        ``timeout`` seconds passed first (the run may still finish), or
        ``record_timeout`` with no run recorded.
    """
    known = set(known)
    record_timeout = RECORD_TIMEOUT if record_timeout is None else record_timeout
    started = clock()
    deadline = started + timeout
    run: Run | None = None
    while True:
        fresh = [r for r in registry.list_runs(city) if r.key == key and r.run not in known]
        run = fresh[0] if fresh else None  # newest first
        if on_update is not None:
            on_update(run)
        if run is not None and run.status in FINAL:
            return run
        if run is None and clock() - started >= min(record_timeout, timeout):
            raise OperationFailed(
                f"gave up waiting after {min(record_timeout, timeout):g} s: no run was recorded for "
                f"{key}, so the stack has not seen the upload (is the key under the stack's "
                f"RawPrefix? did its onboard function fail? citymodels status shows the "
                f"failure queue); follow it with: citymodels status {city}"
            )
        if clock() >= deadline:
            where = f"its run is still {run.status}" if run else "no run was recorded yet"
            raise OperationFailed(
                f"gave up waiting after {timeout:g} s: {where}; "
                f"follow it with: citymodels status {city}"
            )
        sleep(interval)


# -- status ----------------------------------------------------------------------------


STATUS_PAGE = 50
"""Cities per page of ``citymodels status`` unless ``--limit`` says otherwise."""


def cities_overview(
    registry: Registry, *, limit: int = STATUS_PAGE, after: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """Return a page of cities (in id order, after ``after``) with their serving state
    and newest upload, and the city to continue after (None on the last page).

    A page reads one range of the registry's city items and each of its cities' runs,
    never the whole table: ``citymodels status`` stays fast at 10,000 cities.
    """
    cities, last = registry.list_cities_page(
        ("*",), after=validate_city_id(after) if after else None, limit=limit
    )
    overview = []
    for city in cities:
        runs = registry.list_runs(city.city)
        overview.append(
            {
                **city.to_dict(),
                "uploads": len(runs),
                "newest_upload": runs[0].to_dict() if runs else None,
            }
        )
    return overview, last


DEFAULT_STUCK_AFTER_SECONDS = 5400.0
"""The template's ``StuckRunSeconds`` default: a run in flight longer is *stuck*."""


def run_counts(
    registry: Registry,
    *,
    stuck_after_seconds: float | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Return how many runs are in flight, stuck (in flight longer than the bound), failed.

    The bound defaults to :data:`DEFAULT_STUCK_AFTER_SECONDS`.

    Counted on the registry's ``watched-runs`` index (a Query per status, never a scan
    of every upload). A stuck run is one the reconciler examines on its next sweep: it
    moves it on, fails it with a reason, or leaves it while its job still runs.
    """
    if stuck_after_seconds is None:
        stuck_after_seconds = DEFAULT_STUCK_AFTER_SECONDS
    moment = now or datetime.now(UTC)
    cutoff = (moment - timedelta(seconds=stuck_after_seconds)).isoformat(timespec="milliseconds")
    cutoff = cutoff.replace("+00:00", "Z")
    return {
        "in_flight": sum(registry.count_watched(status) for status in IN_PROGRESS),
        "stuck": sum(registry.count_watched(status, before=cutoff) for status in IN_PROGRESS),
        "failed": registry.count_watched(FAILED),
        "stuck_after_seconds": stuck_after_seconds,
    }


def city_detail(registry: Registry, city: str) -> dict[str, Any]:
    """Return one city's serving state and every upload, newest first.

    Raises
    ------
    UnknownCity
        Nothing was ever uploaded for it.
    """
    state = registry.get_city(city)
    return {**state.to_dict(), "uploads": [run.to_dict() for run in registry.list_runs(city)]}


def rejected_keys(s3: Any, bucket: str, *, peek: int = 10) -> dict[str, Any]:
    """Return the uploads rejected before reaching any city (a key naming no valid city,
    or no ``.csv`` name): how many, and the newest ``peek`` described.

    The onboard function files their reports under ``reports/_rejected/{sha256(key)}.json``
    (the registry has no city to file them under), so they are read from the bucket.
    """
    from citymodels.layout import REJECTED_PREFIX

    found: list[tuple[Any, str]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=REJECTED_PREFIX):
        found += [(o["LastModified"], o["Key"]) for o in page.get("Contents", [])]
    found.sort(reverse=True)
    described = []
    for modified, report in found[:peek]:
        body = json.loads(s3.get_object(Bucket=bucket, Key=report)["Body"].read())
        described.append(
            {
                "time": modified.isoformat().replace("+00:00", "Z"),
                "key": body.get("key", ""),
                "reason": body.get("summary", ""),
                "report": report,
            }
        )
    return {"count": len(found), "peek": described}


def read_report(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    """Return a report the stack wrote (``reports/...json``) as JSON data.

    Raises
    ------
    UsageError
        No such report, or ``key`` is not under ``reports/``.
    """
    from citymodels.layout import REPORTS_PREFIX

    key = key.removeprefix(f"s3://{bucket}/")
    if not key.startswith(REPORTS_PREFIX):
        raise UsageError(
            f"{key!r} is not a report key (they start with {REPORTS_PREFIX}; "
            "citymodels status lists them)",
            field="report",
        )
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey as err:
        raise UsageError(f"no report at s3://{bucket}/{key}", field="report") from err
    return dict(json.loads(body))


def failure_queue(sqs: Any, queue_url: str, *, peek: int = 10) -> dict[str, Any]:
    """Return how many messages wait in the failure queue, and a look at a few.

    The messages are received with a visibility timeout of 0: they stay in the queue,
    visible to anyone else, and are only described here (an event-driven function's
    OnFailure record names the function, the error and the event).
    """
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    ).get("Attributes", {})
    waiting = int(attributes.get("ApproximateNumberOfMessages", 0))
    in_flight = int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0))
    messages: list[dict[str, Any]] = []
    if waiting and peek > 0:
        answer = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=min(peek, 10),
            VisibilityTimeout=0,
            WaitTimeSeconds=0,
            AttributeNames=["SentTimestamp"],
        )
        messages = [describe_failure(m) for m in answer.get("Messages", [])]
    return {"queue_url": queue_url, "waiting": waiting, "in_flight": in_flight, "peek": messages}


def describe_failure(message: Mapping[str, Any]) -> dict[str, Any]:
    """Summarise one failure-queue message (a Lambda OnFailure record, or anything else)."""
    sent = message.get("Attributes", {}).get("SentTimestamp")
    summary: dict[str, Any] = {"message_id": message.get("MessageId", "")}
    if sent:
        summary["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(sent) / 1000))
    try:
        body = json.loads(message.get("Body", ""))
    except (TypeError, json.JSONDecodeError):
        body = None
    if not isinstance(body, dict):
        summary["error"] = _clip(str(message.get("Body", "")))
        return summary
    context = body.get("requestContext") or {}
    function_arn = str(context.get("functionArn", ""))
    if function_arn:
        parts = function_arn.split(":")
        summary["function"] = parts[6] if len(parts) > 6 else function_arn
    if context.get("condition"):
        summary["condition"] = context["condition"]
    response = body.get("responsePayload") or {}
    if isinstance(response, dict) and (response.get("errorType") or response.get("errorMessage")):
        summary["error"] = _clip(
            f"{response.get('errorType', 'Error')}: {response.get('errorMessage', '')}"
        )
    summary["event"] = _event_subject(body.get("requestPayload", body))
    if body.get("timestamp"):
        summary["time"] = body["timestamp"]
    return summary


def _event_subject(event: Any) -> str:
    if not isinstance(event, dict):
        return ""
    detail = event.get("detail") or {}
    if not isinstance(detail, dict):
        return str(event.get("detail-type", ""))
    for name in ("ProcessingJobName", "TrainingJobName"):
        if detail.get(name):
            return f"{name}={detail[name]}"
    obj = detail.get("object")
    if isinstance(obj, dict) and obj.get("key"):
        bucket = (detail.get("bucket") or {}).get("name", "")
        return f"s3://{bucket}/{obj['key']}" if bucket else str(obj["key"])
    return str(event.get("detail-type", ""))


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- models, rollback, remove ----------------------------------------------------------


def city_versions(registry: Registry, city: str) -> dict[str, Any]:
    """Return a city's published versions, newest first, marking the one served."""
    state = registry.get_city(city)
    served = state.current if state.serving else ""
    return {
        **state.to_dict(),
        "versions": [
            {
                "version": run.version,
                "published_at": run.published_at,
                "metrics": run.metrics,
                "model_key": run.model_key,
                "current": run.version == served,
            }
            for run in registry.versions(city)
        ],
    }


def rollback(
    registry: Registry, city: str, version: str, *, cutover_seconds: float = 0.0
) -> dict[str, Any]:
    """Serve an earlier published version of a city (pins the alias).

    The cut-over is scheduled ``cutover_seconds`` ahead (the stack's AliasCacheSeconds
    plus a margin, :attr:`~citymodels_devkit.stack.StackOutputs.cutover_seconds`), as a
    publish's is, so the API never answers with the newer version again once it has
    answered with this one.

    Raises
    ------
    InvalidVersion, UnknownRun, NotPublishable
        Not a version id, no such version, or a version that was never published.
    """
    return registry.rollback(
        validate_city_id(city), version, cutover_seconds=cutover_seconds
    ).to_dict()


def remove(registry: Registry, city: str) -> dict[str, Any]:
    """Stop serving a city; its uploads, runs and models are kept."""
    return registry.remove(city).to_dict()


# -- API keys --------------------------------------------------------------------------


def split_patterns(values: Iterable[str]) -> list[str]:
    """Return city patterns given as separate arguments and/or comma-separated."""
    return validate_patterns([p for value in values for p in value.split(",") if p.strip()])


def create_key(
    registry: Registry, cities: Iterable[str], *, admin: bool = False, description: str = ""
) -> tuple[str, ApiKey]:
    """Create an API key; return ``(secret, key)`` (the secret is not stored, its hash is)."""
    return registry.create_key(split_patterns(cities), admin=admin, description=description)


# -- fine-grained access (notebook section 9) ------------------------------------------

_ACCOUNT = re.compile(r"\d{12}")


def caller_account(sts: Any) -> tuple[str, str]:
    """Return ``(account, partition)`` of the credentials in use (STS GetCallerIdentity)."""
    identity = sts.get_caller_identity()
    arn = str(identity.get("Arn", ""))
    partition = arn.split(":")[1] if arn.count(":") >= 5 else "aws"
    return str(identity["Account"]), partition


def endpoint_arn(*, partition: str, region: str, account: str, endpoint_name: str) -> str:
    """Return the ARN of a SageMaker endpoint.

    SageMaker writes resource names in ARNs in lower case (an endpoint created as
    ``CityModels`` is ``.../endpoint/citymodels``), and IAM compares ARNs as written.
    """
    if _ACCOUNT.fullmatch(account) is None:
        raise UsageError(f"account {account!r} must be 12 digits", field="account")
    return f"arn:{partition}:sagemaker:{region}:{account}:endpoint/{endpoint_name.lower()}"


def access_policy(cities: Iterable[str], arn: str) -> dict[str, Any]:
    """Return the IAM policy letting a caller invoke only these cities' models directly."""
    return target_model_policy(arn, split_patterns(cities))


# -- predict ---------------------------------------------------------------------------


@dataclass
class Rows:
    """Houses to price, as API instances, with their actual prices when the input had them."""

    instances: list[dict[str, float | int | str]]
    actual: list[float | None] = field(default_factory=list)


def _instance(record: Mapping[str, Any], where: str) -> tuple[dict[str, Any], float | None]:
    """Check one house locally (the API checks again) and normalise its values."""
    by_name: dict[str, Any] = {}
    for name, value in record.items():
        upper = str(name).strip().upper()
        if upper not in COLUMNS:
            raise UsageError(
                f"{where}: unknown field {name!r}; expected {', '.join(FEATURES)}", field=str(name)
            )
        by_name[upper] = value
    missing = [c for c in FEATURES if c not in by_name]
    if missing:
        raise UsageError(f"{where}: missing {', '.join(missing)}", field=missing[0])
    instance: dict[str, Any] = {}
    try:
        for column in FEATURES:
            if column in FLAG_FEATURES:
                instance[column] = parse_flag(column, by_name[column])
            else:
                number = parse_number(column, by_name[column])
                instance[column] = int(number) if number.is_integer() else number
        actual = None
        if by_name.get(LABEL) not in (None, ""):
            actual = parse_number(LABEL, by_name[LABEL])
    except InvalidRecord as err:
        raise UsageError(f"{where}: {err.message}", field=err.field) from err
    return instance, actual


def _rows(records: Iterable[tuple[Mapping[str, Any], str]]) -> Rows:
    rows = Rows(instances=[])
    for record, where in records:
        instance, actual = _instance(record, where)
        rows.instances.append(instance)
        rows.actual.append(actual)
    if not rows.instances:
        raise UsageError("no rows to price", field="rows")
    return rows


def rows_from_pairs(pairs: Sequence[str]) -> Rows:
    """Return one house given as ``KEY=VALUE`` arguments (``YEAR_BUILT=1995 ...``)."""
    record: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"expected KEY=VALUE (e.g. YEAR_BUILT=1995), got {pair!r}")
        record[name] = value
    return _rows([(record, "row")])


def _read_text(path: Path) -> str:
    if str(path) == "-":
        return sys.stdin.read()
    _existing_file(path)
    return path.read_text(encoding="utf-8-sig")


def rows_from_json(path: Path) -> Rows:
    """Return houses from a JSON file: ``{"instances": [...]}`` or a list of objects."""
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not JSON (line {err.lineno}: {err.msg})") from err
    if isinstance(data, dict) and "instances" in data:
        data = data["instances"]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise UsageError(f'{path} must hold {{"instances": [{{...}}, ...]}} or a list of objects')
    return _rows((record, f"{path} row {i}") for i, record in enumerate(data, 1))


def rows_from_csv(path: Path) -> Rows:
    """Return houses from a CSV file: with a header row, or headerless in raw column order.

    Headerless rows have the eight features, or all nine raw columns (PRICE last, then
    shown next to the prediction): an upload's file can be priced as it is.
    """
    reader = csv.reader(io.StringIO(_read_text(path)))
    lines = [(n, row) for n, row in enumerate(reader, 1) if any(f.strip() for f in row)]
    if not lines:
        raise UsageError(f"{path} has no rows", field="rows")
    header: list[str] | None = None
    first = lines[0][1]
    if all(f.strip() and not _is_number(f) for f in first):
        header = [f.strip() for f in first]
        lines = lines[1:]
    records: list[tuple[Mapping[str, Any], str]] = []
    for number, row in lines:
        where = f"{path} line {number}"
        if header is not None:
            names: Sequence[str] = header
        elif len(row) in (len(FEATURES), len(COLUMNS)):
            names = COLUMNS[: len(row)]
        else:
            raise UsageError(
                f"{where}: expected {len(FEATURES)} values ({', '.join(FEATURES)}), "
                f"optionally then {LABEL}; found {len(row)}"
            )
        if len(row) != len(names):
            raise UsageError(f"{where}: {len(row)} values for {len(names)} columns")
        records.append((dict(zip(names, row, strict=True)), where))
    return _rows(records)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Priced:
    """What the API answered for a set of rows."""

    city: str
    model_versions: list[str]
    prices: list[float]
    actual: list[float | None]
    latency_ms: list[float]
    """Round-trip time of each request (one per :data:`API_MAX_ROWS` rows)."""

    def to_dict(self) -> dict[str, Any]:
        """Return the answer as a JSON-ready mapping, of one shape whatever the row count:
        ``model_version`` the version that answered the last request (a string),
        ``model_versions`` every one that answered, ``latency_ms`` one per request."""
        return {
            "city": self.city,
            "model_version": self.model_versions[-1] if self.model_versions else None,
            "model_versions": sorted(set(self.model_versions)),
            "predictions": [
                {"price": price, **({"actual": actual} if actual is not None else {})}
                for price, actual in zip(self.prices, self.actual, strict=True)
            ],
            "latency_ms": list(self.latency_ms),
        }


def predict(
    api_url: str,
    api_key: str,
    city: str,
    rows: Rows,
    *,
    timeout: float = 30.0,
) -> Priced:
    """Price houses through the HTTP API (``POST /cities/{city}/predictions``).

    Rows are sent as JSON instances, at most :data:`API_MAX_ROWS` per request.

    Raises
    ------
    ApiCallFailed
        The API answered with an error (its message is kept) or could not be reached.
    """
    validate_city_id(city)
    if not api_key:
        raise UsageError("no API key: pass --api-key or set CITYMODELS_API_KEY", field="api_key")
    path = f"cities/{city}/predictions"
    versions: list[str] = []
    prices: list[float] = []
    latencies: list[float] = []
    with ApiClient(api_url, api_key, timeout=timeout, user_agent="citymodels-cli") as api:
        url = api.url(path)
        for start in range(0, len(rows.instances), API_MAX_ROWS):
            batch = rows.instances[start : start + API_MAX_ROWS]
            answer, milliseconds = api.json("POST", path, {"instances": batch})
            latencies.append(round(milliseconds, 1))
            try:
                versions.append(str(answer["model_version"]))
                got = [float(p["price"]) for p in answer["predictions"]]
            except (KeyError, TypeError, ValueError) as err:
                raise ApiCallFailed(
                    f"unexpected answer from {url}: {_clip(str(answer))}", status=200
                ) from err
            if len(got) != len(batch):
                raise ApiCallFailed(
                    f"the API priced {len(got)} of {len(batch)} rows",
                    status=200,
                    field="predictions",
                )
            prices.extend(got)
    return Priced(city, versions, prices, list(rows.actual), latencies)


# -- clean up (notebook section 10) ----------------------------------------------------


def count_object_versions(s3: Any, bucket: str) -> int:
    """Return how many object versions and delete markers the bucket holds."""
    total = 0
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        total += len(page.get("Versions", [])) + len(page.get("DeleteMarkers", []))
    return total


def empty_bucket(
    s3: Any,
    bucket: str,
    *,
    batch_size: int = S3_DELETE_BATCH,
    on_deleted: Callable[[int], None] | None = None,
) -> int:
    """Delete every object version and delete marker of a (versioned) bucket.

    Each round lists the bucket from the start and deletes what it lists, in batches of
    at most ``batch_size`` (DeleteObjects' limit is 1,000), until nothing is left.

    Returns
    -------
    int
        How many versions and delete markers were deleted.

    Raises
    ------
    OperationFailed
        S3 refused to delete some (e.g. Object Lock); the message names one.
    """
    if not 0 < batch_size <= S3_DELETE_BATCH:
        raise ValueError(f"batch_size must be 1..{S3_DELETE_BATCH}")
    deleted = 0
    while True:
        page = s3.list_object_versions(Bucket=bucket, MaxKeys=batch_size)
        entries = [
            {"Key": item["Key"], "VersionId": item["VersionId"]}
            for item in page.get("Versions", []) + page.get("DeleteMarkers", [])
        ]
        if not entries:
            return deleted
        for start in range(0, len(entries), batch_size):
            chunk = entries[start : start + batch_size]
            answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
            errors = answer.get("Errors", [])
            if errors:
                first = errors[0]
                raise OperationFailed(
                    f"S3 refused to delete {len(errors)} object version(s) of {bucket}, e.g. "
                    f"{first.get('Key')} ({first.get('Code')}: {first.get('Message')})"
                )
            deleted += len(chunk)
            if on_deleted is not None:
                on_deleted(len(chunk))


def cleanup_next_steps(
    bucket: str,
    *,
    stack_name: str | None,
    region: str | None,
    local: bool,
    cleanup_command: str = "citymodels cleanup --yes",
) -> list[str]:
    """Return what to run after the bucket is emptied (``sam delete`` retains the bucket)."""
    if local:
        return ["citymodels local down"]
    region_flag = f" --region {region}" if region else ""
    return [
        f"sam delete --stack-name {stack_name or '<stack name>'}{region_flag}",
        f"{cleanup_command}   (again, only if anything was written to the bucket meanwhile)",
        f"aws s3api delete-bucket --bucket {bucket}{region_flag}",
    ]
