"""The registry: one DynamoDB table holding, per city, every upload and run, every
published version, the ``current`` alias, and the API keys (docs/design.md §3).

Single-table layout (partition key ``pk``, sort key ``sk``, both strings):

| item | pk | sk | attributes |
|---|---|---|---|
| city | ``CITIES`` | ``{city}`` | current, previous, cutover_at, alias_rev, |
|  |  |  | newest_published, pinned, removed, counts, times |
| run (one per upload) | ``CITY#{city}`` | ``RUN#{id}`` | key, status, reason, sha256, |
|  |  |  | attempt, job names, metrics, gate, model_key |
| content | ``CITY#{city}`` | ``CONTENT#{sha256}`` | attempts, last_run, published_version |
| job | ``JOB#{job_name}`` | ``JOB`` | city, run |
| API key | ``KEY#{sha256(secret)}`` | ``KEY`` | key_id, cities, admin, revoked |
| API key listing | ``KEYS`` | ``{key_id}`` | the same, without the hash |

Watched runs: a run whose status is PROCESSING, TRAINING or FAILED also carries
``watched_status`` (its status) and ``status_since`` (when it entered it), the keys of
the sparse global secondary index ``watched-runs`` (:data:`WATCHED_INDEX`). So the
reconciler finds the runs in flight past a bound, and ``citymodels status`` counts the
stuck and failed ones, with a Query of one index partition, never a scan: other runs
(published, rejected...) are not in the index at all. :func:`watched_attributes` is
the one place that decides them, from the status being written.

A run's id is the version id minted for its upload (rejected uploads get one too, so
every upload sorts in upload order). The alias moves only forward: :meth:`Registry.publish`
is a conditional write on ``newest_published``, so a run that finishes late never
replaces a model trained on a newer upload; :meth:`Registry.rollback` pins it back.

Items that must change together change in one DynamoDB transaction, so a crash between
two writes cannot leave the registry half-updated (docs/design.md §3, "Crash safety"):
a run and its city's record (:meth:`Registry.create_run`), a run naming its job and the
job's record (:meth:`Registry.name_job`), and the alias, the run and its content's record
(:meth:`Registry.publish`).

An alias move is a scheduled cut-over (docs/design.md §3, "cut-over"): the city item
keeps the version that answered until now (``previous``) and the instant
(``cutover_at``) from which ``current`` answers, at least the readers' cache lifetime
ahead. Every reader whose cached copy predates the move has dropped it by that instant,
and every reader that has the new copy answers ``previous`` until then, so once any
reader answers the new version no reader answers an older one. One move at a time: a
move waits for a pending cut-over's instant first.

This module uses only boto3 (present in every Lambda runtime): no pandas, no numpy.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from citymodels.cities import validate_city_id
from citymodels.errors import CityModelsError
from citymodels.versions import validate_version

# Upload and run statuses (docs/design.md §3).
REJECTED = "REJECTED"
DUPLICATE = "DUPLICATE"
PROCESSING = "PROCESSING"
TRAINING = "TRAINING"
PUBLISHED = "PUBLISHED"
NOT_PUBLISHED = "NOT_PUBLISHED"
FAILED = "FAILED"
STATUSES = (REJECTED, DUPLICATE, PROCESSING, TRAINING, PUBLISHED, NOT_PUBLISHED, FAILED)
IN_PROGRESS = (PROCESSING, TRAINING)
FINAL = (REJECTED, DUPLICATE, PUBLISHED, NOT_PUBLISHED, FAILED)

KEY_PREFIX = "cmk_"
"""API keys look like ``cmk_<43 url-safe characters>``; only their SHA-256 is stored."""

TABLE_KEY_SCHEMA = (
    {"AttributeName": "pk", "KeyType": "HASH"},
    {"AttributeName": "sk", "KeyType": "RANGE"},
)

WATCHED = (PROCESSING, TRAINING, FAILED)
"""The statuses a run is indexed under: in flight (the reconciler's), or failed (counted)."""
WATCHED_INDEX = "watched-runs"
WATCHED_INDEX_KEY_SCHEMA = (
    {"AttributeName": "watched_status", "KeyType": "HASH"},
    {"AttributeName": "status_since", "KeyType": "RANGE"},
)
WATCHED_INDEX_PROJECTION = {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["city", "run"]}
"""What the index holds of a run: enough to find it (the run itself is read consistently)."""


def table_definition() -> dict[str, Any]:
    """``CreateTable``'s parameters (all but ``TableName``) for a table this code can
    use: the key schema and the watched-runs index as defined here (``template.yaml``
    declares the same; a test keeps the two equal). For tests and benchmarks on moto."""
    keys = [a["AttributeName"] for a in (*TABLE_KEY_SCHEMA, *WATCHED_INDEX_KEY_SCHEMA)]
    return {
        "KeySchema": list(TABLE_KEY_SCHEMA),
        "AttributeDefinitions": [{"AttributeName": key, "AttributeType": "S"} for key in keys],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": WATCHED_INDEX,
                "KeySchema": list(WATCHED_INDEX_KEY_SCHEMA),
                "Projection": WATCHED_INDEX_PROJECTION,
            }
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


def watched_attributes(status: str, now: str) -> tuple[dict[str, str], tuple[str, ...]]:
    """Return the index attributes of a run whose status becomes ``status`` at ``now``.

    Returns
    -------
    tuple
        ``(to_set, to_remove)``: ``watched_status`` and ``status_since`` for a watched
        status, else both names to remove (the index is sparse: a key attribute that
        is absent keeps the run out of it).
    """
    names = tuple(a["AttributeName"] for a in WATCHED_INDEX_KEY_SCHEMA)
    if status in WATCHED:
        return dict(zip(names, (status, now))), ()
    return {}, names


class RegistryError(CityModelsError):
    """Base class of registry errors."""

    code = "registry_error"


class UnknownCity(RegistryError, LookupError):
    """Nothing was ever uploaded for this city."""

    code = "unknown_city"
    status_code = 404


class UnknownRun(RegistryError, LookupError):
    """No run with this id for the city."""

    code = "unknown_run"
    status_code = 409


class UnknownKey(RegistryError, LookupError):
    """No API key with this id."""

    code = "unknown_key"


class NotPublishable(RegistryError):
    """The alias cannot move to this version (never published, or not newer)."""

    code = "not_publishable"
    status_code = 409


def now_iso() -> str:
    """Return the current UTC time as ISO 8601 with milliseconds and ``Z``."""
    return epoch_iso(time.time())


def epoch_iso(epoch: float) -> str:
    """Return epoch seconds as UTC ISO 8601 with milliseconds and ``Z``."""
    when = datetime.fromtimestamp(epoch, timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_epoch(text: str) -> float:
    """Return the epoch seconds of a time written by :func:`epoch_iso`."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


CUTOVER_MARGIN_SECONDS = 0.25
"""Added to the readers' cache lifetime when scheduling a cut-over: it covers the alias
write's own latency and the readers' clock skew (docs/design.md §3, "cut-over")."""


def cutover_lead(alias_cache_seconds: float) -> float:
    """How far ahead an alias move is scheduled when readers cache it this long.

    The cache lifetime plus :data:`CUTOVER_MARGIN_SECONDS`; none when nothing caches
    (every read then sees the write at once, so the move can take effect at once).
    """
    return alias_cache_seconds + CUTOVER_MARGIN_SECONDS if alias_cache_seconds > 0 else 0.0


class AliasBusy(RegistryError):
    """Another alias move kept winning the race for this city."""

    code = "alias_busy"
    status_code = 409


@dataclass
class Run:
    """One upload of a city and what became of it."""

    city: str
    run: str
    key: str
    status: str
    reason: str = ""
    sha256: str = ""
    attempt: int = 0
    size: int = 0
    processing_job: str = ""
    input_key: str = ""
    training_job: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    model_key: str = ""
    schema_version: str = ""
    duplicate_of: str = ""
    report_key: str = ""
    created_at: str = ""
    updated_at: str = ""
    published_at: str = ""

    @property
    def version(self) -> str:
        """The version id this run publishes under (the run id)."""
        return self.run

    def to_dict(self) -> dict[str, Any]:
        """Return the run as a JSON-ready mapping, without empty fields."""
        body: dict[str, Any] = {}
        for name in Run.__dataclass_fields__:
            value = getattr(self, name)
            if value not in ("", 0, {}, None) or name in ("city", "run", "status"):
                body[name] = value
        return body


@dataclass
class City:
    """A city's alias and publication state."""

    city: str
    current: str = ""
    previous: str = ""
    cutover_at: str = ""
    alias_rev: int = 0
    newest_published: str = ""
    pinned: bool = False
    removed: bool = False
    current_metrics: dict[str, float] = field(default_factory=dict)
    created_at: str = ""
    updated_at: str = ""

    @property
    def serving(self) -> bool:
        """Whether a model answers for this city (now, or once the cut-over is due)."""
        return bool(self.current) and not self.removed

    def cutover_epoch(self) -> float:
        """Return the instant (epoch seconds) from which ``current`` answers; 0 if none."""
        return iso_epoch(self.cutover_at) if self.cutover_at else 0.0

    def answering(self, now: float | None = None) -> str | None:
        """Return the version that answers at ``now`` (epoch seconds), or None.

        ``current`` from its cut-over instant on, ``previous`` before it (None if
        nothing answered before the move); None when the city was removed.
        """
        if self.removed or not self.current:
            return None
        if (time.time() if now is None else now) >= self.cutover_epoch():
            return self.current
        return self.previous or None

    def to_dict(self) -> dict[str, Any]:
        """Return the city as a JSON-ready mapping."""
        return {
            "city": self.city,
            "current_version": self.current if not self.removed else None,
            "answering_version": self.answering(),
            "cutover_at": self.cutover_at or None,
            "newest_published": self.newest_published or None,
            "pinned": self.pinned,
            "removed": self.removed,
            "metrics": self.current_metrics,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass
class ApiKey:
    """An API key's grants (never the secret itself)."""

    key_id: str
    cities: list[str]
    admin: bool = False
    revoked: bool = False
    description: str = ""
    created_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the key's grants as a JSON-ready mapping."""
        return {
            "key_id": self.key_id,
            "cities": list(self.cities),
            "admin": self.admin,
            "revoked": self.revoked,
            "description": self.description,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class ContentRecord:
    """What the registry knows of one upload content (by SHA-256) for a city."""

    sha256: str
    attempts: int
    last_run: str
    published_version: str


@dataclass(frozen=True)
class WatchedRun:
    """A run as the ``watched-runs`` index lists it (eventually consistent: read the run)."""

    city: str
    run: str
    status: str
    since: str


def hash_secret(secret: str) -> str:
    """Return the stored form of an API key: its SHA-256, hex."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class Registry:
    """Access to the registry table.

    Parameters
    ----------
    table_name
        The table (stack output ``RegistryTable``).
    client
        A boto3 DynamoDB client; one is created (once) when omitted. Tests pass their own.
    clock
        Epoch seconds, for scheduling cut-overs; injectable for tests.
    """

    def __init__(
        self,
        table_name: str,
        client: Any | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if client is None:
            import boto3

            client = boto3.client("dynamodb")
        from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

        self.table_name = table_name
        self._client = client
        self.clock = clock
        self._ser = TypeSerializer()
        self._de = TypeDeserializer()

    # -- marshalling -----------------------------------------------------------------

    def _item(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self._ser.serialize(_to_dynamo(v)) for k, v in values.items() if v is not None}

    def _plain(self, item: Mapping[str, Any]) -> dict[str, Any]:
        return {k: _from_dynamo(self._de.deserialize(v)) for k, v in item.items()}

    def _get(self, pk: str, sk: str, *, consistent: bool = True) -> dict[str, Any] | None:
        answer = self._client.get_item(
            TableName=self.table_name,
            Key=self._item({"pk": pk, "sk": sk}),
            ConsistentRead=consistent,
        )
        item = answer.get("Item")
        return self._plain(item) if item else None

    def _query(
        self, pk: str, prefix: str = "", *, newest_first: bool = False
    ) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk"
            + (" AND begins_with(sk, :prefix)" if prefix else ""),
            "ExpressionAttributeValues": self._item(
                {":pk": pk, **({":prefix": prefix} if prefix else {})}
            ),
            "ScanIndexForward": not newest_first,
        }
        while True:
            answer = self._client.query(**kwargs)
            for item in answer.get("Items", []):
                yield self._plain(item)
            if "LastEvaluatedKey" not in answer:
                return
            kwargs["ExclusiveStartKey"] = answer["LastEvaluatedKey"]

    def _update_request(
        self,
        pk: str,
        sk: str,
        values: Mapping[str, Any],
        *,
        condition: str | None = None,
        condition_values: Mapping[str, Any] | None = None,
        condition_names: Mapping[str, str] | None = None,
        remove: Sequence[str] = (),
    ) -> dict[str, Any]:
        """The parameters of an update that sets ``values`` and removes the attributes
        ``remove`` (an UpdateItem call, or one ``Update`` of a transaction)."""
        names = {f"#a{i}": name for i, name in enumerate(values)}
        names.update({f"#r{i}": name for i, name in enumerate(remove)})
        names.update(condition_names or {})
        attr_values = {f":a{i}": value for i, value in enumerate(values.values())}
        expression = "SET " + ", ".join(f"#a{i} = :a{i}" for i in range(len(values)))
        if remove:
            expression += " REMOVE " + ", ".join(f"#r{i}" for i in range(len(remove)))
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "Key": self._item({"pk": pk, "sk": sk}),
            "UpdateExpression": expression,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": self._item({**attr_values, **(condition_values or {})}),
        }
        if condition:
            request["ConditionExpression"] = condition
        return request

    def _update(
        self, pk: str, sk: str, values: Mapping[str, Any], **options: Any
    ) -> dict[str, Any]:
        """Make the update :meth:`_update_request` describes; return the item as written."""
        request = self._update_request(pk, sk, values, **options)
        answer = self._client.update_item(**request, ReturnValues="ALL_NEW")
        return self._plain(answer.get("Attributes", {}))

    def _transact(self, *updates: Mapping[str, Any]) -> bool:
        """Make these updates all, or none (one TransactWriteItems call).

        Writes that must happen together are made together, so a crash between them
        (a Lambda timeout, a lost answer) can never leave half of them done.

        Returns
        -------
        bool
            True when they were made; False when a condition failed (none was made).
        """
        try:
            self._client.transact_write_items(
                TransactItems=[{"Update": dict(update)} for update in updates]
            )
        except self._client.exceptions.TransactionCanceledException as err:
            reasons = {str(r.get("Code")) for r in err.response.get("CancellationReasons", [])}
            # Only failed conditions are an answer; a conflict with another transaction
            # or a throttle is raised, so the event is retried.
            if reasons - {"None"} != {"ConditionalCheckFailed"}:
                raise
            return False
        return True

    @property
    def _condition_failed(self) -> tuple[type[Exception], ...]:
        """botocore's exceptions for a write whose condition did not hold."""
        errors = self._client.exceptions
        return (errors.ConditionalCheckFailedException, errors.TransactionCanceledException)

    # -- cities ----------------------------------------------------------------------

    def get_city(self, city: str) -> City:
        """Return the city's publication state.

        Raises
        ------
        UnknownCity
            Nothing was ever uploaded for it.
        """
        item = self._get("CITIES", validate_city_id(city))
        if item is None:
            raise UnknownCity(f"nothing was ever uploaded for city {city!r}", field="city")
        return _city(item)

    def list_cities(self) -> list[City]:
        """Return every known city, sorted by id (operators' tools; the API pages)."""
        return [_city(item) for item in self._query("CITIES")]

    def list_cities_page(
        self, patterns: Sequence[str] = ("*",), *, after: str | None = None, limit: int = 100
    ) -> tuple[list[City], str | None]:
        """Return up to ``limit`` cities granted by ``patterns``, sorted by id, after ``after``.

        One Query per pattern, each on the key range the pattern covers (``*``: every
        city; ``San*``: the ids starting with ``San``; ``NewYork_NY``: that id), reading
        at most ``limit + 1`` items: never the whole table, however many cities there
        are and however few the patterns grant.

        Returns
        -------
        tuple
            ``(cities, last)``: ``last`` is the id of the page's last city when more
            follow (pass it as ``after`` for the next page), else None.
        """
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be within 1..{MAX_PAGE}, got {limit}")
        found: dict[str, City] = {}
        for low, high in _city_ranges(patterns, after):
            answer = self._client.query(
                TableName=self.table_name,
                KeyConditionExpression="pk = :pk AND sk BETWEEN :low AND :high",
                ExpressionAttributeValues=self._item({":pk": "CITIES", ":low": low, ":high": high}),
                Limit=limit + 1,
                ConsistentRead=False,
            )
            for item in answer.get("Items", []):
                city = _city(self._plain(item))
                found[city.city] = city
        ordered = [found[name] for name in sorted(found)]
        if len(ordered) > limit:
            return ordered[:limit], ordered[limit - 1].city
        return ordered, None

    def _touch_city_update(self, city: str) -> dict[str, Any]:
        """The update that creates the city's record (on its first upload) or dates it."""
        now = now_iso()
        return {
            "TableName": self.table_name,
            "Key": self._item({"pk": "CITIES", "sk": city}),
            "UpdateExpression": "SET city = :city, updated_at = :now, "
            "created_at = if_not_exists(created_at, :now)",
            "ExpressionAttributeValues": self._item({":city": city, ":now": now}),
        }

    # -- runs ------------------------------------------------------------------------

    def get_run(self, city: str, run: str) -> Run:
        """Return one run of a city.

        Raises
        ------
        UnknownRun
            When the city has no such run.
        """
        item = self._get(f"CITY#{validate_city_id(city)}", f"RUN#{validate_version(run)}")
        if item is None:
            raise UnknownRun(f"city {city!r} has no run {run!r}", field="version")
        return _run(item)

    def list_runs(self, city: str, *, newest_first: bool = True) -> list[Run]:
        """Return every run (upload) of a city."""
        pk = f"CITY#{validate_city_id(city)}"
        return [_run(item) for item in self._query(pk, "RUN#", newest_first=newest_first)]

    def create_run(self, run: Run) -> bool:
        """Record a new upload's run; return False if it was already recorded.

        The write is conditional on the run not existing: an event delivered twice
        records one run, and the second delivery learns it is a redelivery. The city's
        record is written in the same transaction, so a city with a run is always
        known (``GET /cities/{city}``, publishing) whatever happens to the caller.
        """
        validate_city_id(run.city)
        validate_version(run.run)
        now = now_iso()
        watched, _ = watched_attributes(run.status, now)
        values = {**run.to_dict(), **watched, "created_at": now, "updated_at": now}
        values.pop("city", None)
        values.pop("run", None)
        created = self._update_request(
            f"CITY#{run.city}",
            f"RUN#{run.run}",
            {"city": run.city, "run": run.run, **values},
            condition="attribute_not_exists(pk)",
        )
        return self._transact(created, self._touch_city_update(run.city))

    def update_run(
        self,
        city: str,
        run: str,
        *,
        expected_status: Sequence[str] | None = None,
        expected_fields: Mapping[str, str] | None = None,
        **fields: Any,
    ) -> Run | None:
        """Set fields of a run (e.g. ``status``, ``reason``, ``training_job``).

        Returns the run as written (``ALL_NEW``: the caller needs no read to go on).

        Parameters
        ----------
        expected_status
            When given, update only if the run's status is one of these; returns None
            otherwise (a stale or duplicated event must not move a run backwards).
        expected_fields
            When given, update only if the run holds these values too (e.g. its
            ``processing_job``: an event about another job moves nothing); returns
            None otherwise.
        """
        request = self._run_update(city, run, fields, expected_status, expected_fields)
        try:
            answer = self._client.update_item(**request, ReturnValues="ALL_NEW")
        except self._condition_failed as err:
            if expected_status or expected_fields:
                return None
            raise UnknownRun(f"city {city!r} has no run {run!r}", field="version") from err
        return _run(self._plain(answer.get("Attributes", {})))

    def _run_update(
        self,
        city: str,
        run: str,
        fields: Mapping[str, Any],
        expected_status: Sequence[str] | None,
        expected_fields: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """The update of an existing run's ``fields``, if its status is ``expected_status``
        and it holds ``expected_fields``."""
        unknown = set(fields) - set(Run.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown run field(s): {sorted(unknown)}")
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"unknown status {fields['status']!r}")
        condition = "attribute_exists(pk)"
        condition_values: dict[str, Any] = {}
        if expected_status:
            placeholders = [f":s{i}" for i in range(len(expected_status))]
            condition += f" AND #st IN ({', '.join(placeholders)})"
            condition_values = dict(zip(placeholders, expected_status))
        condition_names = {"#st": "status"} if expected_status else {}
        for i, (name, value) in enumerate((expected_fields or {}).items()):
            if name not in Run.__dataclass_fields__:
                raise ValueError(f"unknown run field {name!r}")
            condition += f" AND #e{i} = :e{i}"
            condition_names[f"#e{i}"] = name
            condition_values[f":e{i}"] = value
        now = now_iso()
        # the watched-runs index follows the status, in the same write
        watched, unwatched = (
            watched_attributes(fields["status"], now) if "status" in fields else ({}, ())
        )
        return self._update_request(
            f"CITY#{validate_city_id(city)}",
            f"RUN#{validate_version(run)}",
            {**fields, **watched, "updated_at": now},
            condition=condition,
            condition_values=condition_values,
            condition_names=condition_names or None,
            remove=unwatched,
        )

    def watched_runs(self, status: str, *, before: str | None = None) -> Iterator[WatchedRun]:
        """Return the runs in ``status`` (one of :data:`WATCHED`), longest in it first.

        Parameters
        ----------
        before
            Only runs that entered the status before this time (ISO 8601, as
            :func:`now_iso` writes it): the ones in it longer than a bound.
        """
        for item in self._query_watched(status, before, count=False):
            yield WatchedRun(
                city=str(item["city"]),
                run=str(item["run"]),
                status=str(item["watched_status"]),
                since=str(item["status_since"]),
            )

    def count_watched(self, status: str, *, before: str | None = None) -> int:
        """Return how many runs are in ``status`` (since before ``before``, when given)."""
        return sum(int(page) for page in self._query_watched(status, before, count=True))

    def _query_watched(self, status: str, before: str | None, *, count: bool) -> Iterator[Any]:
        if status not in WATCHED:
            raise ValueError(f"runs in {status!r} are not indexed; only {WATCHED}")
        condition = "watched_status = :s" + (" AND status_since < :before" if before else "")
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "IndexName": WATCHED_INDEX,
            "KeyConditionExpression": condition,
            "ExpressionAttributeValues": self._item(
                {":s": status, **({":before": before} if before else {})}
            ),
        }
        if count:
            kwargs["Select"] = "COUNT"
        while True:
            answer = self._client.query(**kwargs)
            if count:
                yield answer.get("Count", 0)
            else:
                yield from (self._plain(item) for item in answer.get("Items", []))
            if "LastEvaluatedKey" not in answer:
                return
            kwargs["ExclusiveStartKey"] = answer["LastEvaluatedKey"]

    # -- content (duplicate detection) -----------------------------------------------

    def get_content(self, city: str, sha256: str) -> ContentRecord | None:
        """Return what is known of this content for the city, or None."""
        item = self._get(f"CITY#{validate_city_id(city)}", f"CONTENT#{sha256}")
        if item is None:
            return None
        return ContentRecord(
            sha256=sha256,
            attempts=int(item.get("attempts", 0)),
            last_run=str(item.get("last_run", "")),
            published_version=str(item.get("published_version", "")),
        )

    def first_attempt(self, city: str, sha256: str, run: str) -> bool:
        """Record ``run`` as attempt 1 of content never seen for the city; False (nothing
        written) when the content is known: ask :meth:`get_content` then.

        One conditional write for the common case, a new upload, where reading first
        would find nothing.
        """
        pk = f"CITY#{validate_city_id(city)}"
        try:
            self._client.update_item(
                TableName=self.table_name,
                Key=self._item({"pk": pk, "sk": f"CONTENT#{sha256}"}),
                UpdateExpression="SET attempts = :one, last_run = :run",
                ConditionExpression="attribute_not_exists(pk)",
                ExpressionAttributeValues=self._item({":one": 1, ":run": run}),
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def record_attempt(self, city: str, sha256: str, run: str) -> int:
        """Count a new run of this content for the city; return its attempt number."""
        pk = f"CITY#{validate_city_id(city)}"
        answer = self._client.update_item(
            TableName=self.table_name,
            Key=self._item({"pk": pk, "sk": f"CONTENT#{sha256}"}),
            UpdateExpression="ADD attempts :one SET last_run = :run",
            ExpressionAttributeValues=self._item({":one": 1, ":run": run}),
            ReturnValues="ALL_NEW",
        )
        return int(self._plain(answer["Attributes"])["attempts"])

    # -- jobs ------------------------------------------------------------------------

    def name_job(
        self,
        city: str,
        run: str,
        job_name: str,
        *,
        expected_status: Sequence[str],
        **fields: Any,
    ) -> bool:
        """Set a run's fields that name its job, and remember the job's run, together.

        One transaction: a run never names a job whose state-change events would find
        no run (the job's Completed event would be dropped and the run never end).

        Parameters
        ----------
        city, run, job_name
            The run, and the job it will start.
        expected_status
            Write only if the run's status is one of these.
        fields
            The run's fields to set (``processing_job=job_name``, ``input_key``...).

        Returns
        -------
        bool
            False when the run was not in ``expected_status`` (nothing was written).
        """
        job = self._update_request(
            f"JOB#{job_name}", "JOB", {"city": validate_city_id(city), "run": validate_version(run)}
        )
        return self._transact(self._run_update(city, run, fields, expected_status), job)

    def run_for_job(self, job_name: str) -> Run | None:
        """Return the run a job belongs to, or None for a job this registry never started."""
        key = self.job_run(job_name)
        if key is None:
            return None
        return self.get_run(*key)

    def job_run(self, job_name: str) -> tuple[str, str] | None:
        """Return ``(city, run)`` of a job's run, or None for a job this registry never
        started (one read: a caller that writes the run next needs no read of the run)."""
        item = self._get(f"JOB#{job_name}", "JOB")
        if item is None:
            return None
        return str(item["city"]), str(item["run"])

    # -- publishing ------------------------------------------------------------------

    def publish(
        self,
        city: str,
        version: str,
        *,
        metrics: Mapping[str, float],
        model_key: str,
        reason: str = "",
        expected_status: Sequence[str] | None = None,
        cutover_seconds: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        run_fields: Mapping[str, Any] | None = None,
        record: Run | None = None,
        city_record: City | None = None,
    ) -> bool:
        """Move the alias to ``version`` if it is newer than every version ever published.

        The alias (a cut-over, see the module's docstring), the run (PUBLISHED, with its
        model) and its content's record (so the same bytes uploaded again are a
        duplicate of this version) change in one transaction: whatever happens to the
        caller, the version served is listed, can be rolled back to, and is never
        trained again.

        Parameters
        ----------
        reason
            The run's reason (the quality gate's verdict).
        expected_status
            When given, publish only if the run's status is one of these.
        cutover_seconds
            How far ahead the cut-over is scheduled: the longest any reader caches the
            alias (``AliasCacheSeconds``) plus :data:`CUTOVER_MARGIN_SECONDS`
            (:func:`cutover_lead`). A city's
            first version answers at once (no reader can hold an older one).
        sleep
            Waits for a pending cut-over; injectable for tests.
        run_fields
            More of the run's fields to write with it (the gate's numbers, the metrics).
        record, city_record
            The run and the city as the caller last read them, to save reading them
            again: the run's content hash never changes, and a city read before another
            move is caught by the write's condition (``alias_rev``) and read again.

        Returns
        -------
        bool
            True when the alias moved; False when a newer version was already published
            (the run finished late) or the run was not in ``expected_status``, in which
            case nothing changes.

        Raises
        ------
        UnknownRun
            The city has no such run.
        """
        if record is None:
            record = self.get_run(city, version)  # its content hash does not change
        content = (
            [
                self._update_request(
                    f"CITY#{city}", f"CONTENT#{record.sha256}", {"published_version": version}
                )
            ]
            if record.sha256
            else []
        )

        def write(alias: dict[str, Any], now: float) -> bool | None:
            run = self._run_update(
                city,
                version,
                {**(run_fields or {}), "status": PUBLISHED, "reason": reason,
                 "published_at": epoch_iso(now), "model_key": model_key},
                expected_status,
            )  # fmt: skip
            if self._transact(alias, run, *content):
                return True
            if expected_status and self.get_run(city, version).status not in expected_status:
                return False  # the run moved on: nothing changes
            return None  # the alias moved meanwhile: read it again

        return self._move_alias(
            city,
            version,
            {"newest_published": version, "pinned": False, "current_metrics": dict(metrics)},
            write,
            newer_only=True,
            cutover_seconds=cutover_seconds,
            sleep=sleep,
            known=city_record,
        )

    def rollback(
        self,
        city: str,
        version: str,
        *,
        cutover_seconds: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> City:
        """Pin the alias to an earlier published version, cut over as a publish is.

        Raises
        ------
        NotPublishable
            The version was never published (no model to serve).
        """
        run = self.get_run(city, version)
        if not run.published_at or not run.model_key:
            raise NotPublishable(
                f"version {version} of {city} was never published ({run.status}); "
                "only published versions can be served",
                field="version",
            )

        moved: list[City] = []

        def write(alias: dict[str, Any], now: float) -> bool | None:
            try:
                answer = self._client.update_item(**alias, ReturnValues="ALL_NEW")
            except self._condition_failed:
                return None  # another move came in between: read it again
            moved.append(_city(self._plain(answer["Attributes"])))
            return True

        self._move_alias(
            city,
            version,
            {"pinned": True, "current_metrics": run.metrics},
            write,
            newer_only=False,
            cutover_seconds=cutover_seconds,
            sleep=sleep,
        )
        return moved[0]

    def _move_alias(
        self,
        city: str,
        version: str,
        values: Mapping[str, Any],
        write: Callable[[dict[str, Any], float], bool | None],
        *,
        newer_only: bool,
        cutover_seconds: float,
        sleep: Callable[[float], None],
        attempts: int = 8,
        known: City | None = None,
    ) -> bool:
        """Schedule the cut-over of ``city``'s alias to ``version``.

        Read the city, wait out a pending cut-over, then ``write`` the update of the
        city's item (with whatever must change with it) that sets ``current``,
        ``previous`` (what answers now) and ``cutover_at``, on the condition that no
        other move came in between (``alias_rev``). A publish also needs ``version`` to
        be newer than every version published before.

        Returns
        -------
        bool
            False when a newer version was published (a publish only) or ``write``
            said so; True when written. ``known``, the city as last read, stands for
            the first read (a stale one fails the write's condition and is read again).
        """
        for _ in range(attempts):
            if known is not None and known.city == city:
                record, known = known, None
            else:
                item = self._get("CITIES", city)
                record = _city(item) if item else City(city=city)
            now = self.clock()
            pending = record.cutover_epoch() - now
            if pending > 0:
                sleep(pending + 0.01)
                continue
            if newer_only and record.newest_published and record.newest_published >= version:
                return False
            # A city nothing ever answered for cuts over at once: no reader holds an
            # older version of it. A removed city answers nothing until the instant.
            at = now + cutover_seconds if record.current else now
            condition_values: dict[str, Any] = {}
            condition = "attribute_not_exists(alias_rev)"
            if record.alias_rev:
                condition, condition_values = "alias_rev = :rev", {":rev": record.alias_rev}
            if newer_only:
                condition += (
                    " AND (attribute_not_exists(newest_published) OR newest_published < :v)"
                )
                condition_values[":v"] = version
            alias = self._update_request(
                "CITIES",
                city,
                {
                    "city": city,
                    **values,
                    "current": version,
                    "previous": record.answering(now) or "",
                    "cutover_at": epoch_iso(at),
                    "alias_rev": record.alias_rev + 1,
                    "removed": False,
                    "updated_at": epoch_iso(now),
                },
                condition=condition,
                condition_values=condition_values,
            )
            written = write(alias, now)
            if written is not None:
                return written
        raise AliasBusy(
            f"the alias of {city} moved under this change {attempts} times; try again",
            field="city",
        )

    def remove(self, city: str) -> City:
        """Stop serving a city (its uploads, runs and models are kept)."""
        self.get_city(city)
        return _city(self._update("CITIES", city, {"removed": True, "updated_at": now_iso()}))

    def versions(self, city: str) -> list[Run]:
        """Return the city's published versions, newest first."""
        return [r for r in self.list_runs(city) if r.published_at]

    # -- API keys --------------------------------------------------------------------

    def create_key(
        self, cities: Sequence[str], *, admin: bool = False, description: str = ""
    ) -> tuple[str, ApiKey]:
        """Create an API key; return ``(secret, key)``. The secret is not stored."""
        from citymodels.auth import validate_patterns

        patterns = validate_patterns(cities)
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            key_id=hash_secret(secret)[:12],
            cities=patterns,
            admin=admin,
            description=description,
            created_at=now_iso(),
        )
        digest = hash_secret(secret)
        values = key.to_dict()
        secret_item = self._item({"pk": f"KEY#{digest}", "sk": "KEY", **values})
        listing_item = self._item({"pk": "KEYS", "sk": key.key_id, "hash": digest, **values})
        self._client.transact_write_items(
            TransactItems=[
                {
                    "Put": {
                        "TableName": self.table_name,
                        "Item": secret_item,
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
                {"Put": {"TableName": self.table_name, "Item": listing_item}},
            ]
        )
        return secret, key

    def key_for_secret(self, secret: str) -> ApiKey | None:
        """Return the grants of a presented key, or None (unknown or revoked)."""
        if not secret.startswith(KEY_PREFIX) or len(secret) > 200:
            return None
        item = self._get(f"KEY#{hash_secret(secret)}", "KEY", consistent=False)
        if item is None or item.get("revoked"):
            return None
        return _key(item)

    def list_keys(self) -> list[ApiKey]:
        """Return every key's grants (revoked ones included)."""
        return [_key(item) for item in self._query("KEYS")]

    def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke a key by id.

        Raises
        ------
        UnknownKey
            No key has this id.
        """
        listing = self._get("KEYS", key_id)
        if listing is None:
            raise UnknownKey(f"no API key with id {key_id!r}", field="key_id")
        self._update(f"KEY#{listing['hash']}", "KEY", {"revoked": True})
        return _key(self._update("KEYS", key_id, {"revoked": True}))


# -- city pages ----------------------------------------------------------------------

MAX_PAGE = 1000
"""The most cities one page holds."""

_FIRST_ID_CHAR, _PAST_ID_CHARS = "-", "~"
"""City ids are ASCII letters, digits, ``_`` and ``-``: ``-`` sorts before every other
one of those characters and ``~`` after them all, so ``id + "-"`` is the first possible
id after ``id`` and ``prefix + "~"`` sorts after every id starting with ``prefix``."""


def _city_ranges(patterns: Sequence[str], after: str | None) -> list[tuple[str, str]]:
    """The sort-key ranges (inclusive) of the cities ``patterns`` grant, after ``after``."""
    ranges = []
    for pattern in patterns:
        if pattern == "*":
            low, high = _FIRST_ID_CHAR, _PAST_ID_CHARS
        elif pattern.endswith("*"):
            low, high = pattern[:-1], pattern[:-1] + _PAST_ID_CHARS
        else:
            low = high = pattern
        if after is not None:
            low = max(low, after + _FIRST_ID_CHAR)
        if low <= high:
            ranges.append((low, high))
    return ranges


# -- conversions ---------------------------------------------------------------------


def _to_dynamo(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, Mapping):
        return {str(k): _to_dynamo(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_dynamo(v) for v in value]
    return value


def _from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return (
            int(value)
            if value == value.to_integral_value() and abs(value) < 2**53
            else float(value)
        )
    if isinstance(value, dict):
        return {k: _from_dynamo(v) for k, v in value.items()}
    if isinstance(value, (list, set)):
        return [_from_dynamo(v) for v in value]
    return value


def _fields(cls: type, item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k in cls.__dataclass_fields__}  # type: ignore[attr-defined]


def _run(item: Mapping[str, Any]) -> Run:
    values = _fields(Run, item)
    values["metrics"] = {k: float(v) for k, v in dict(values.get("metrics", {})).items()}
    return Run(**values)


def _city(item: Mapping[str, Any]) -> City:
    values = _fields(City, item)
    values["current_metrics"] = {
        k: float(v) for k, v in dict(values.get("current_metrics", {})).items()
    }
    return City(**values)


def _key(item: Mapping[str, Any]) -> ApiKey:
    values = _fields(ApiKey, item)
    values["cities"] = list(values.get("cities", []))
    return ApiKey(**values)
