"""The HTTP API's operations, independent of Lambda and API Gateway (docs/design.md §3).

``functions/predict/app.py`` routes each request to one method of :class:`CityApi` and
turns what it returns (dataclasses, which also give the OpenAPI document its schemas)
or raises (a :class:`~citymodels.errors.CityModelsError`, whose class carries its HTTP
status, ``status_code``: :func:`http_status`) into the HTTP answer.
``functions/authorize/app.py`` calls :func:`authorize`.

Who may do what comes from the authorizer's context (``requestContext.authorizer``:
``key_id``, ``cities``, ``admin``), read into a :class:`Caller`. API Gateway enforces the
authorizer's policy first; the handler checks the same patterns again, so a city outside
the key's patterns is refused (403) even if a route were misconfigured, and such a
request never reaches a model.

Errors are JSON ``{"code", "message", "field"?}``:

======  =======================================================================
status  when
======  =======================================================================
400     bad input: the field is named (``instances[3].SQUARE_FEET``, ``city``, ...)
403     city outside the key's patterns; rollback without an admin key
404     unknown city; a known city with no model serving
409     rollback to a version that was never published
413     more than :data:`MAX_ROWS` rows or :data:`MAX_BODY_BYTES` bytes
415     a body that is neither JSON nor CSV
424     the model failed on the rows (MME ``ModelError``)
502     the endpoint does not have the model the registry names (an operator's problem)
503     the model was still loading when the deadline passed (``Retry-After`` given)
======  =======================================================================

A client's mistake is never answered with a 5xx.

This module uses only the standard library, pydantic and the package (no pandas, no
numpy, no Powertools): it is unit-tested without Lambda.
"""

from __future__ import annotations

import base64
import binascii
import csv
import functools
import io
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from citymodels.auth import authorizer_policy, city_allowed
from citymodels.cities import CITY_ID_PATTERN, validate_city_id
from citymodels.endpoint import (
    EndpointClient,
    ModelFailed,
    ModelNotReady,
)
from citymodels.errors import (
    CityModelsError,
    InvalidRecord,
)
from citymodels.layout import target_model
from citymodels.registry import (
    MAX_PAGE,
    City,
    Registry,
    Run,
    UnknownCity,
    cutover_lead,
    epoch_iso,
)
from citymodels.schema import (
    FEATURES,
    FIELD_RULES,
    FLAG_FEATURES,
    FLAG_VOCABULARY,
    NUMERIC_FEATURES,
    encode_record,
    encode_values,
    parse_flag,
    parse_number,
    record_features,
)
from citymodels.versions import VERSION_PATTERN, validate_version

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
        APIGatewayRouteArn,
    )

MAX_ROWS = 1000
"""Rows per prediction request (one InvokeEndpoint call)."""

MAX_BODY_BYTES = 6 * 1024 * 1024
"""Bytes per request body: Lambda's synchronous payload limit (6 MB)."""

RETRY_AFTER_SECONDS = 5
"""What a 503 tells the client to wait: a model usually finishes loading within seconds."""

DEADLINE_MARGIN_SECONDS = 1.0
"""Time kept back from the Lambda's remaining time to answer after the last retry."""

JSON = "application/json"
CSV = "text/csv"


# -- errors --------------------------------------------------------------------------


class ApiError(CityModelsError):
    """Base class of errors raised by the HTTP API itself (not by the contracts)."""

    code = "api_error"


class BadRequest(ApiError, ValueError):
    """A request the API cannot read: malformed JSON or CSV, a wrong shape, a bad row."""

    code = "bad_request"
    status_code = 400


class Forbidden(ApiError):
    """The key may not do this (a city outside its patterns; rollback without admin)."""

    code = "forbidden"
    status_code = 403


class NoModelServing(ApiError, LookupError):
    """The city is known but no model answers for it (nothing published yet, or removed)."""

    code = "no_model"
    status_code = 404


class PayloadTooLarge(ApiError):
    """More rows or bytes than one request may carry."""

    code = "payload_too_large"
    status_code = 413


class UnsupportedMediaType(ApiError):
    """A body that is neither ``application/json`` nor ``text/csv``."""

    code = "unsupported_media_type"
    status_code = 415


class Unauthorized(ApiError):
    """No usable API key: missing or malformed header, unknown or revoked key.

    ``str()`` is exactly ``"Unauthorized"``: a Lambda authorizer failing with that message
    is API Gateway's convention for answering 401. The detail is in :attr:`reason`, for
    the logs only (never tell a caller which part of a key was wrong).
    """

    code = "unauthorized"
    status_code = 401

    def __init__(self, reason: str) -> None:
        super().__init__("Unauthorized")
        self.reason = reason


def http_status(err: Exception) -> int:
    """Return the HTTP status answering an error: the class's ``status_code``.

    Every :class:`~citymodels.errors.CityModelsError` carries its own status (500 unless
    its class says otherwise); anything else is unexpected: 500.
    """
    return err.status_code if isinstance(err, CityModelsError) else 500


def error_headers(err: Exception) -> dict[str, str]:
    """Return the extra headers of an error answer (``Retry-After`` for a loading model)."""
    if isinstance(err, ModelNotReady):
        return {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return {}


# -- response bodies (dataclasses: the OpenAPI document's schemas) -----------------------


@dataclass
class ErrorBody:
    """Every error answer."""

    code: str
    message: str
    field: str | None = None


@dataclass
class Price:
    """One prediction."""

    price: float


@dataclass
class PredictionResponse:
    """``POST /cities/{city}/predictions``: prices in the order of the rows sent."""

    city: str
    model_version: str
    predictions: list[Price]


@dataclass
class CitySummary:
    """A city as listed by ``GET /cities`` (and answered by a rollback)."""

    city: str
    current_version: str | None
    answering_version: str | None
    cutover_at: str | None
    pinned: bool
    metrics: dict[str, float]
    updated_at: str


@dataclass
class CityList:
    """``GET /cities``: a page of the cities the key may see, in id order."""

    cities: list[CitySummary]
    next: Annotated[
        str | None,
        Field(
            description="Pass as `next` for the following page (the id of this page's last "
            "city); null on the last page"
        ),
    ] = None


DEFAULT_PAGE = 100
"""Cities per page of ``GET /cities`` unless ``limit`` says otherwise."""

PAGE_TOKEN_PATTERN = f"^{CITY_ID_PATTERN.pattern}$"
"""A ``next`` token: the id of the previous page's last city (any city id is one)."""


PAGE_PARAMETERS = ("limit", "next")
"""The query parameters ``GET /cities`` takes; any other is refused (400)."""


def reject_unknown_parameters(names: Iterable[str], allowed: Sequence[str]) -> None:
    """Refuse query parameters a route does not take, rather than ignore a typo.

    Raises
    ------
    BadRequest
        Naming the first unknown parameter and the ones the route takes.
    """
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise BadRequest(
            f"unknown query parameter {unknown[0]!r}; this route takes {', '.join(allowed)}",
            field=unknown[0],
        )


def page_after(token: str) -> str:
    """Return the city a ``next`` token continues after.

    Raises
    ------
    BadRequest
        Not a city id.
    """
    try:
        return validate_city_id(token)
    except CityModelsError as err:
        raise BadRequest(f"'next' must be a city id: {err}", field="next") from err


@dataclass
class VersionInfo:
    """A published version of a city's model."""

    version: str
    key: str
    published_at: str
    metrics: dict[str, float]
    current: bool


@dataclass
class UploadInfo:
    """An upload of a city and what became of it (newest first)."""

    key: str
    version: str
    status: str
    reason: str
    duplicate_of: str | None
    metrics: dict[str, float]
    created_at: str
    updated_at: str


@dataclass
class CityDetail:
    """``GET /cities/{city}``: the alias, the published versions and every upload."""

    city: str
    current_version: str | None
    answering_version: str | None
    cutover_at: str | None
    pinned: bool
    metrics: dict[str, float]
    versions: list[VersionInfo]
    uploads: list[UploadInfo]


VERSION_REGEX = f"^{VERSION_PATTERN.pattern}$"
"""The version id's pattern as a JSON Schema ``pattern`` (for the OpenAPI document)."""


@dataclass
class RollbackRequest:
    """``POST /cities/{city}/rollback``: the published version to serve again."""

    # Documented, not enforced by the model: validate_version answers with the example.
    version: Annotated[
        str,
        Field(
            description="A published version id of the city",
            json_schema_extra={"pattern": VERSION_REGEX},
        ),
    ]


@dataclass
class PredictionOutcome:
    """What a prediction returns to the handler: the answer and what to measure."""

    response: PredictionResponse
    rows: int
    latency_ms: float


def city_summary(city: City, now: float) -> CitySummary:
    """Return a registry city as listed by ``GET /cities`` at ``now`` (epoch seconds)."""
    return CitySummary(
        city=city.city,
        current_version=city.current if city.serving else None,
        answering_version=city.answering(now),
        cutover_at=_pending_cutover(city, now),
        pinned=city.pinned,
        metrics=dict(city.current_metrics),
        updated_at=city.updated_at,
    )


def _pending_cutover(city: City, now: float) -> str | None:
    """The instant ``current_version`` starts answering, while that is still ahead."""
    if city.serving and city.cutover_at and city.answering(now) != city.current:
        return city.cutover_at
    return None


def city_detail(city: City, runs: Sequence[Run], now: float) -> CityDetail:
    """Return ``GET /cities/{city}``'s answer from the city and its runs (newest first)."""
    current = city.current if city.serving else None
    return CityDetail(
        city=city.city,
        current_version=current,
        answering_version=city.answering(now),
        cutover_at=_pending_cutover(city, now),
        pinned=city.pinned,
        metrics=dict(city.current_metrics),
        versions=[
            VersionInfo(
                version=run.version,
                key=run.key,
                published_at=run.published_at,
                metrics=dict(run.metrics),
                current=run.version == current,
            )
            for run in runs
            if run.published_at
        ],
        uploads=[
            UploadInfo(
                key=run.key,
                version=run.run,
                status=run.status,
                reason=run.reason,
                duplicate_of=run.duplicate_of or None,
                metrics=dict(run.metrics),
                created_at=run.created_at,
                updated_at=run.updated_at,
            )
            for run in runs
        ],
    )


# -- who is calling ------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """The key behind a request, as the authorizer described it.

    Attributes
    ----------
    key_id
        The key's id (never its secret).
    patterns
        City patterns it grants (``NewYork_NY``, ``San*``, ``*``).
    admin
        Whether it may roll back.
    """

    key_id: str
    patterns: tuple[str, ...]
    admin: bool = False

    @classmethod
    def from_authorizer(cls, context: Mapping[str, Any] | None) -> Caller:
        """Read the authorizer context (``requestContext.authorizer``).

        API Gateway passes the context's values as strings (``cities`` comma-joined,
        ``admin`` ``"true"``/``"false"``). A missing context grants nothing: a route
        wrongly left without the authorizer fails closed.
        """
        context = context or {}
        cities = context.get("cities") or ""
        patterns = tuple(p.strip() for p in str(cities).split(",") if p.strip())
        admin = context.get("admin")
        return cls(
            key_id=str(context.get("key_id") or context.get("principalId") or ""),
            patterns=patterns,
            admin=admin is True or str(admin).lower() == "true",
        )

    def may_see(self, city: str) -> bool:
        """Return whether the key's patterns grant ``city``."""
        return city_allowed(self.patterns, city)

    def require_city(self, city: str) -> None:
        """Raise :class:`Forbidden` unless the key's patterns grant ``city``."""
        if not self.may_see(city):
            raise Forbidden(f"this API key has no access to city {city!r}", field="city")

    def require_admin(self) -> None:
        """Raise :class:`Forbidden` unless the key is an admin key."""
        if not self.admin:
            raise Forbidden("only an admin API key may roll back a city", field="Authorization")


# -- the alias cache -----------------------------------------------------------------


@dataclass(frozen=True)
class Alias:
    """What the registry said about a city's alias at one moment.

    Attributes
    ----------
    city
        The city id.
    known
        False when nothing was ever uploaded for it.
    version
        The version the alias points to, or None (nothing published yet, or removed).
    removed
        Whether it was removed (``citymodels remove``).
    previous
        The version answering until ``cutover_at`` (None: nothing answers until then).
    cutover_at
        Epoch seconds from which ``version`` answers (0: it already does).
    """

    city: str
    known: bool
    version: str | None
    removed: bool = False
    previous: str | None = None
    cutover_at: float = 0.0

    def answering(self, now: float) -> str | None:
        """Return the version that answers at ``now`` (epoch seconds)."""
        return self.version if now >= self.cutover_at else self.previous


class AliasCache:
    """City → alias, re-read from the registry at most every ``ttl_seconds``.

    The prediction path must not read DynamoDB on every call (docs/design.md §4: a read
    costs milliseconds; the alias changes a few times a day). An alias move (publish,
    rollback) is a cut-over scheduled at least ``ttl_seconds`` (``ALIAS_CACHE_SECONDS``)
    ahead (:meth:`citymodels.registry.Registry.publish`): by that instant every cached
    copy older than the move has expired here and in every other execution environment,
    and the copies that know the move answer the previous version until then. So once
    any answer comes from the new version, none comes from an older one, and no request
    reads DynamoDB for it. An entry's lifetime counts from before its read was sent.

    Only serving cities are cached: a city that is unknown or has no model yet is read
    again on the next call, so a newly published city answers at once ("drop a CSV and
    it is queryable"; a city's first version needs no cut-over); such requests are
    authenticated and limited to the key's cities. The cache holds at most
    ``max_entries`` cities (the oldest entry goes first).

    Parameters
    ----------
    registry
        The registry.
    ttl_seconds
        How long an answer is reused; 0 reads the registry every time.
    clock
        Monotonic seconds for the entries' lifetime; injectable for tests.
    max_entries
        Bound on the cached cities.
    wall_clock
        Epoch seconds, compared with cut-over instants; injectable for tests.
    """

    def __init__(
        self,
        registry: Registry,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_entries: int = 1024,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not ttl_seconds >= 0:
            raise ValueError(f"ttl_seconds must be >= 0, got {ttl_seconds!r}")
        self._registry = registry
        self._ttl = ttl_seconds
        self._clock = clock
        self._wall = wall_clock
        self._max = max_entries
        self._entries: dict[str, tuple[float, Alias]] = {}

    def get(self, city: str) -> Alias:
        """Return the city's alias, from the cache while it is fresh."""
        now = self._clock()
        cached = self._entries.get(city)
        if cached is not None and now < cached[0]:
            return cached[1]
        try:
            record = self._registry.get_city(city)
        except UnknownCity:
            alias = Alias(city=city, known=False, version=None)
        else:
            alias = Alias(
                city=city,
                known=True,
                version=record.current if record.serving else None,
                removed=record.removed,
                previous=(record.previous or None) if record.serving else None,
                cutover_at=record.cutover_epoch(),
            )
        if self._ttl > 0 and alias.version is not None:
            self._entries.pop(city, None)
            while len(self._entries) >= self._max:
                del self._entries[next(iter(self._entries))]
            self._entries[city] = (now + self._ttl, alias)
        return alias

    def serving_version(self, city: str) -> str:
        """Return the version answering for ``city``.

        Raises
        ------
        UnknownCity
            Nothing was ever uploaded for it.
        NoModelServing
            It is known but no model is published (or it was removed).
        """
        alias = self.get(city)
        if not alias.known:
            raise UnknownCity(f"nothing was ever uploaded for city {city!r}", field="city")
        version = alias.answering(self._wall())
        if version is None and alias.removed:
            raise NoModelServing(
                f"city {city!r} was removed: no model serves it until a rollback or a new "
                f"published upload (citymodels rollback {city} VERSION)",
                field="city",
            )
        if version is None and alias.version is not None:
            raise NoModelServing(
                f"city {city!r} was removed; version {alias.version} answers from "
                f"{epoch_iso(alias.cutover_at)} (its cut-over)",
                field="city",
            )
        if version is None:
            raise NoModelServing(
                f"city {city!r} has no published model: its upload may still be processing "
                f"or training, or none was published; its uploads and why: "
                f"citymodels status {city} (GET /cities/{city})",
                field="city",
            )
        return version

    def invalidate(self, city: str) -> None:
        """Forget a city's alias (after this function moved it)."""
        self._entries.pop(city, None)


# -- prediction requests -------------------------------------------------------------


@dataclass(frozen=True)
class RequestBody:
    """A request's body as API Gateway delivers it.

    Attributes
    ----------
    text
        ``event["body"]`` (None when there is none).
    base64_encoded
        ``event["isBase64Encoded"]`` (binary media types).
    content_type
        The ``Content-Type`` header, or None.
    """

    text: str | None
    base64_encoded: bool = False
    content_type: str | None = None

    def data(self) -> bytes:
        """Return the body's bytes (base64 decoded when needed).

        Raises
        ------
        PayloadTooLarge
            Over :data:`MAX_BODY_BYTES`.
        BadRequest
            Undecodable base64.
        """
        if not self.text:
            return b""
        if self.base64_encoded:
            if len(self.text) > (MAX_BODY_BYTES // 3 + 1) * 4:
                raise _too_large_body(len(self.text) * 3 // 4)
            try:
                raw = base64.b64decode(self.text, validate=True)
            except (binascii.Error, ValueError) as err:
                raise BadRequest("the request body is not valid base64", field="body") from err
        else:
            raw = self.text.encode("utf-8", errors="surrogatepass")
        if len(raw) > MAX_BODY_BYTES:
            raise _too_large_body(len(raw))
        return raw

    def media_type(self) -> str:
        """Return the media type without parameters, lower case (JSON when absent)."""
        value = (self.content_type or "").split(";", 1)[0].strip().lower()
        return value or JSON


def _too_large_body(size: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body is {size:,} bytes; at most {MAX_BODY_BYTES:,} are accepted",
        field="body",
    )


def _too_many_rows(rows: int, where: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request has {rows:,} rows; at most {MAX_ROWS:,} are accepted per request",
        field=where,
    )


def parse_prediction_rows(body: RequestBody) -> list[list[str]]:
    """Validate a prediction request and return its rows as canonical raw CSV values.

    The body is ``application/json`` ``{"instances": [{...8 fields...}, ...]}`` or
    ``text/csv`` rows of the eight features (no PRICE; an optional header row naming
    them, in any order). Every value is checked with the same rules the training data
    met (:data:`citymodels.schema.FIELD_RULES`): a JSON body by :data:`PredictionRequest`,
    the model generated from them, a CSV body by :func:`~citymodels.schema.encode_values`
    (or :func:`~citymodels.schema.encode_record` under a header row).

    Returns
    -------
    list of list of str
        One row per house, the eight values in :data:`~citymodels.schema.FEATURES` order
        written canonically (``1995``, ``2100.5``, ``y``): what the endpoint receives.

    Raises
    ------
    BadRequest
        Naming the field: ``instances[3].SQUARE_FEET`` (JSON), ``rows[3].SQUARE_FEET``
        (CSV, with the line number in the message), ``instances``, ``body``.
    PayloadTooLarge
        More than :data:`MAX_ROWS` rows or :data:`MAX_BODY_BYTES` bytes.
    UnsupportedMediaType
        Neither JSON nor CSV.
    """
    media_type = body.media_type()
    if media_type not in (JSON, CSV) and not media_type.endswith("+json"):
        raise UnsupportedMediaType(
            f"Content-Type {body.content_type!r} is not supported; send {JSON} "
            f'({{"instances": [...]}}) or {CSV} (rows of {", ".join(FEATURES)})',
            field="Content-Type",
        )
    raw = body.data()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRequest(f"the request body is not UTF-8 (byte {err.start})", field="body") from err
    if media_type == CSV:
        return _csv_rows(text)
    return _json_rows(text)


MAX_INTEGER_DIGITS = 4000
"""Longer JSON integers are read as an infinite float: Python refuses to convert integers
of more than 4,300 digits (``sys.get_int_max_str_digits``), and no field needs one."""


def parse_json(text: str | bytes) -> Any:
    """Parse a request's JSON body; every way a client can get it wrong is a :class:`BadRequest`.

    Used for every JSON body (also as Powertools' ``json_body_deserializer``), so that
    what :func:`json.loads` raises on hostile input (``RecursionError`` on deep nesting,
    ``ValueError`` on integers of thousands of digits) never becomes a 500. NaN and
    Infinity parse to floats, so that the field rules name the field they are in.
    Duplicate names in one object are refused (``json.loads`` would keep the last).

    Raises
    ------
    BadRequest
        With ``field="body"`` (or the repeated name), and where the JSON went wrong.
    """
    try:
        return json.loads(text, parse_int=_json_int, object_pairs_hook=_json_object)
    except BadRequest:  # a repeated name, from _json_object
        raise
    except RecursionError as err:
        raise BadRequest(
            "the request body nests JSON arrays or objects too deeply", field="body"
        ) from err
    except json.JSONDecodeError as err:
        raise BadRequest(
            f"the request body is not valid JSON: {err.msg} at position {err.pos}", field="body"
        ) from err
    except (ValueError, TypeError) as err:  # e.g. bytes that are not UTF-8
        raise BadRequest(f"the request body is not valid JSON: {err}", field="body") from err


def _json_int(digits: str) -> int | float:
    if len(digits.lstrip("-")) > MAX_INTEGER_DIGITS:
        return float(digits)  # +-inf: a value no field rule accepts, named by that rule
    return int(digits)


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for name, value in pairs:
        if name in document:
            raise BadRequest(f"field {name!r} appears twice in one JSON object", field=name)
        document[name] = value
    return document


# -- the JSON body: a pydantic model generated from the field rules ---------------------


HOUSE_DESCRIPTION = (
    "One house: the eight features, named as in the upload's CSV header. The schema is "
    "the form to send; the API also accepts names in any case, a PRICE field (ignored), "
    'numbers written as decimal strings ("1995", " 2100.5 ") and flags in any case with '
    'surrounding spaces (" Y "), as the upload\'s CSV does.'
)


class _HouseBase(BaseModel):
    # Strict: the model's own checks are the documented schema. The lax forms the API has
    # always accepted are read into that form first, by the same functions that read an
    # upload's CSV (so a value means the same in both, and errors name the field's rule).
    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)

    @model_validator(mode="before")
    @classmethod
    def _named_as_the_columns(cls, data: Any) -> Any:
        return record_features(data) if isinstance(data, Mapping) else data


def _number_value(column: str, value: object) -> float | int:
    number = parse_number(column, value)
    return int(number) if FIELD_RULES[column].whole else number


def _house_fields() -> dict[str, Any]:
    """Return the House model's fields, generated from :data:`~citymodels.schema.FIELD_RULES`."""
    fields: dict[str, Any] = {}
    for column in NUMERIC_FEATURES:
        rule = FIELD_RULES[column]
        kind = int if rule.whole else float
        fields[column] = (
            Annotated[kind, BeforeValidator(functools.partial(_number_value, column))],
            Field(
                description=rule.describe(),
                gt=rule.minimum if rule.exclusive_minimum else None,
                ge=None if rule.exclusive_minimum else rule.minimum,
                le=rule.maximum,
            ),
        )
    flag = Literal[FLAG_VOCABULARY]  # type: ignore[valid-type]
    for column in FLAG_FEATURES:
        fields[column] = (
            Annotated[flag, BeforeValidator(functools.partial(parse_flag, column))],
            Field(description=" or ".join(repr(v) for v in FLAG_VOCABULARY)),
        )
    return fields


House = create_model("House", __base__=_HouseBase, __doc__=HOUSE_DESCRIPTION, **_house_fields())
"""One house of a JSON prediction request (fields generated from the field rules)."""


def _rows_within_limit(value: Any) -> Any:
    # fail_fast (below) stops at the first bad house, before pydantic's own max_length check
    # is reached; a body over the limit is answered 413 whatever its houses hold.
    if isinstance(value, list) and len(value) > MAX_ROWS:
        raise PydanticCustomError(
            "too_long",
            "List should have at most {max_length} items, not {actual_length}",
            {"max_length": MAX_ROWS, "actual_length": len(value)},
        )
    return value


PredictionRequest = create_model(
    "PredictionRequest",
    __config__=ConfigDict(extra="forbid", strict=True, defer_build=True),
    __doc__="The houses to price, in the order their prices are answered.",
    instances=(  # type: ignore[arg-type]  # House is a class made at run time
        Annotated[list[House], BeforeValidator(_rows_within_limit)],  # type: ignore[valid-type]
        Field(
            min_length=1,
            max_length=MAX_ROWS,
            # The first bad house is the answer: reading every other one too cost 20 times
            # as long (100 ms for 1,000 houses of 8 bad values each, against 5 ms).
            fail_fast=True,
            description=f"At least one house, at most {MAX_ROWS:,} (more is answered 413)",
        ),
    ),
)
"""``POST /cities/{city}/predictions``'s ``application/json`` body."""


def _json_rows(text: str) -> list[list[str]]:
    if not text.strip():
        raise BadRequest('the request body is empty; send {"instances": [...]}', field="body")
    try:
        request = PredictionRequest.model_validate(parse_json(text))
    except ValidationError as err:
        raise _json_body_error(err) from err
    return [_house_row(house) for house in request.instances]  # type: ignore[attr-defined]


def _house_row(house: BaseModel) -> list[str]:
    """Write a validated house as the eight raw values the endpoint reads."""
    numbers = [_number(float(getattr(house, column))) for column in NUMERIC_FEATURES]
    return numbers + [getattr(house, column) for column in FLAG_FEATURES]


def _json_body_error(err: ValidationError) -> ApiError:
    """Return the error answering an invalid JSON body: its first mistake, named by path.

    The first mistake in the order a reader meets them (the body's own names, then
    ``instances`` itself, then the rows in order, each row's fields in
    :data:`~citymodels.schema.FEATURES` order), which is not the order of pydantic's list
    (it gives the body's unknown names last).
    """
    errors = err.errors(include_url=False)

    def reading_order(indexed: tuple[int, Any]) -> tuple[int, str, int]:
        index, error = indexed
        loc = error["loc"]
        if not loc:
            return (0, "", index)
        if error["type"] == "extra_forbidden" and len(loc) == 1:
            return (1, str(loc[0]), index)
        return (2 if len(loc) == 1 else 3, "", index)

    _, error = min(enumerate(errors), key=reading_order)
    loc, kind, value = error["loc"], error["type"], error["input"]
    if not loc:
        return BadRequest(
            f'the request body must be a JSON object {{"instances": [...]}}, '
            f"not {_json_type(value)}",
            field="body",
        )
    if len(loc) == 1 and kind == "extra_forbidden":
        return BadRequest(
            f"unknown field {loc[0]!r}; the body has one field, 'instances'", field=str(loc[0])
        )
    if len(loc) == 1 and kind == "missing":
        return BadRequest("missing field 'instances'", field="instances")
    if len(loc) == 1 and kind == "too_short":
        return BadRequest("'instances' is empty; send at least one house", field="instances")
    if len(loc) == 1 and kind == "too_long":
        return _too_many_rows(len(value), "instances")
    if len(loc) == 1:
        return BadRequest(
            f"'instances' must be a list of objects, not {_json_type(value)}", field="instances"
        )
    where = f"instances[{loc[1]}]"
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, InvalidRecord):  # from a field rule or the names, via schema.py
        return BadRequest(f"{where}: {cause.message}", field=f"{where}.{cause.field}")
    if len(loc) == 2 and kind == "model_type":
        return BadRequest(
            f"{where} must be an object of {', '.join(FEATURES)}, not {_json_type(value)}",
            field=where,
        )
    # Only the strict model's own checks are left, which every value read by schema.py
    # passes; answered all the same, naming the path.
    path = where + "".join(f".{part}" for part in loc[2:])
    return BadRequest(f"{path}: {error['msg']}", field=path)


def _csv_rows(text: str) -> list[list[str]]:
    lines = [
        (number, cells)
        for number, cells in _read_csv(text.lstrip("\ufeff"))
        if any(cell.strip() for cell in cells)
    ]
    if not lines:
        raise BadRequest(
            f"the CSV body has no rows; send one line per house: {', '.join(FEATURES)}",
            field="body",
        )
    header = _header(lines[0][1])
    if header is not None:
        lines = lines[1:]
        if not lines:
            raise BadRequest("the CSV body has a header but no rows", field="body")
    if len(lines) > MAX_ROWS:
        raise _too_many_rows(len(lines), "body")
    rows = []
    for index, (number, cells) in enumerate(lines):
        where = f"rows[{index}]"
        try:
            if header is None:
                encoded = encode_values(cells)
            else:
                if len(cells) != len(header):
                    raise InvalidRecord(
                        f"expected {len(header)} values (as the header), got {len(cells)}",
                        field="features",
                    )
                encoded = encode_record(dict(zip(header, cells)))
        except InvalidRecord as err:
            field_name = where if err.field in (None, "features") else f"{where}.{err.field}"
            raise BadRequest(f"line {number}: {err.message}", field=field_name) from err
        rows.append(_canonical(encoded))
    return rows


def _read_csv(text: str) -> list[tuple[int, list[str]]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        return [(reader.line_num, cells) for cells in reader]
    except csv.Error as err:
        raise BadRequest(
            f"line {reader.line_num}: the CSV cannot be read: {err}", field="body"
        ) from err


def _header(cells: Sequence[str]) -> list[str] | None:
    """Return the column names when ``cells`` is a header row, else None."""
    names = [cell.strip().upper() for cell in cells]
    known = set(FEATURES) | {"PRICE"}
    if not any(name in known for name in names):
        return None
    unknown = [cells[i] for i, name in enumerate(names) if name not in known]
    if unknown:
        raise BadRequest(
            f"the CSV header names an unknown column {unknown[0].strip()!r}; "
            f"expected {', '.join(FEATURES)}",
            field="header",
        )
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise BadRequest(f"the CSV header repeats column {duplicated[0]}", field="header")
    return names


def _canonical(encoded: Sequence[float]) -> list[str]:
    """Write encoded features back as the eight raw values the endpoint reads.

    The encoding (:data:`~citymodels.schema.ENCODED_FEATURES`) is the six numbers as
    they are, then one (y, n) one-hot pair per flag.
    """
    count = len(NUMERIC_FEATURES)
    values = [_number(v) for v in encoded[:count]]
    width = len(FLAG_VOCABULARY)
    for i in range(len(FLAG_FEATURES)):
        pair = list(encoded[count + i * width : count + (i + 1) * width])
        values.append(FLAG_VOCABULARY[pair.index(1.0)])
    return values


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def rows_to_csv(rows: Sequence[Sequence[str]]) -> str:
    """Return canonical rows as the CSV body InvokeEndpoint takes (no header)."""
    return "".join(",".join(row) + "\n" for row in rows)


def prediction_request_schema() -> dict[str, Any]:
    """Return the OpenAPI ``requestBody`` of ``POST /cities/{city}/predictions``.

    The JSON body's schema is :data:`PredictionRequest`'s (:func:`json_body_schema`), the
    model that validates it; the CSV body's is :func:`csv_body_pattern`. Both come from
    :data:`~citymodels.schema.FIELD_RULES`, the rules the API enforces.
    """
    example = {
        "YEAR_BUILT": 1995,
        "SQUARE_FEET": 2100.5,
        "NUM_BEDROOMS": 3,
        "NUM_BATHROOMS": 2.5,
        "LOT_ACRES": 0.8,
        "GARAGE_SPACES": 2,
        "FRONT_PORCH": "y",
        "DECK": "n",
    }
    return {
        "required": True,
        "description": (
            f"Houses to price: at most {MAX_ROWS:,} rows and {MAX_BODY_BYTES:,} bytes. "
            "Errors name the row and field, e.g. instances[3].SQUARE_FEET."
        ),
        "content": {
            JSON: {"schema": json_body_schema(), "example": {"instances": [example]}},
            CSV: {
                "schema": {
                    "type": "string",
                    "pattern": csv_body_pattern(),
                    "description": (
                        f"One house per line: {', '.join(FEATURES)} (no PRICE); "
                        "an optional header row naming the columns in any order. "
                        "The pattern gives the plain form of headerless rows within the "
                        "field rules; the rules are those of the JSON body."
                    ),
                },
                "example": ",".join(str(example[c]) for c in FEATURES) + "\n",
            },
        },
    }


def json_body_schema() -> dict[str, Any]:
    """Return :data:`PredictionRequest`'s JSON schema, its definitions written in place.

    The OpenAPI document holds the schema inside the operation's ``requestBody``, where a
    ``#/$defs/...`` reference would point at the document's root.
    """
    schema = PredictionRequest.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, list):
            return [inline(item) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            siblings = {k: inline(v) for k, v in node.items() if k != "$ref"}
            return {**inline(definitions[ref[len("#/$defs/") :]]), **siblings}
        return {k: inline(v) for k, v in node.items()}

    result: dict[str, Any] = inline(schema)
    return result


def csv_body_pattern() -> str:
    """Return a JSON Schema ``pattern`` of headerless CSV rows that the field rules accept.

    Generated from :data:`~citymodels.schema.FIELD_RULES`: each number is a whole number
    within its rule (with up to three decimals where the rule allows fractions and the
    largest whole number plus a fraction still fits), each flag ``y``/``n`` in any case.
    Every body it matches is accepted (a client may send more: headers, quotes, exponents).
    """
    cells = []
    for column in NUMERIC_FEATURES:
        rule = FIELD_RULES[column]
        low = math.floor(rule.minimum) + 1 if rule.exclusive_minimum else math.ceil(rule.minimum)
        high = math.floor(rule.maximum) - (0 if rule.whole else 1)
        number = _integer_range_regex(low, high)
        cells.append(number if rule.whole else f"{number}(?:\\.[0-9]{{1,3}})?")
    cells += ["[yYnN]"] * len(FLAG_FEATURES)
    row = ",".join(cells)
    return f"^(?:{row}(?:\\r?\\n|$)){{1,{MAX_ROWS}}}$"


def _integer_range_regex(low: int, high: int) -> str:
    """Return a regex of the decimal integers from ``low`` to ``high`` (both >= 0)."""
    parts = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        first = max(low, 10 ** (digits - 1) if digits > 1 else 0)
        last = min(high, 10**digits - 1)
        if first <= last:
            parts.append(_same_length_range(str(first), str(last)))
    return "(?:" + "|".join(parts) + ")"


def _same_length_range(low: str, high: str) -> str:
    if low == high:
        return low
    if len(low) == 1:
        return f"[{low}-{high}]"
    if low[0] == high[0]:
        return low[0] + _same_length_range(low[1:], high[1:])
    rest = len(low) - 1
    parts = [low[0] + _same_length_range(low[1:], "9" * rest)]
    if int(high[0]) - int(low[0]) > 1:
        parts.append(f"[{int(low[0]) + 1}-{int(high[0]) - 1}][0-9]{{{rest}}}")
    parts.append(high[0] + _same_length_range("0" * rest, high[1:]))
    return "(?:" + "|".join(parts) + ")"


CITY_PATH_DESCRIPTION = "The city id: a letter, then up to 63 letters, digits, '_' or '-'."
CITY_ID_REGEX = f"^{CITY_ID_PATTERN.pattern}$"
"""The city id's pattern as a JSON Schema ``pattern`` (for the OpenAPI document)."""


# -- the operations ------------------------------------------------------------------


class CityApi:
    """The HTTP API's operations.

    Parameters
    ----------
    registry
        Returns the registry; called once, on first use (so that a route that needs no
        registry creates no DynamoDB client).
    endpoint
        Returns the endpoint client; called once, on the first prediction.
    alias_cache_seconds
        How long an alias lookup is reused (``ALIAS_CACHE_SECONDS``).
    deadline_seconds
        Time budget for a prediction, retries on a loading model included
        (``API_DEADLINE_SECONDS``).
    clock
        Monotonic seconds for the alias cache; injectable for tests.
    wall_clock
        Epoch seconds, compared with cut-over instants; injectable for tests.
    """

    def __init__(
        self,
        registry: Callable[[], Registry],
        endpoint: Callable[[], EndpointClient],
        *,
        alias_cache_seconds: float,
        deadline_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry_factory = registry
        self._endpoint_factory = endpoint
        self._registry: Registry | None = None
        self._endpoint: EndpointClient | None = None
        self._aliases: AliasCache | None = None
        self._alias_cache_seconds = alias_cache_seconds
        self.deadline_seconds = deadline_seconds
        self._clock = clock
        self._wall = wall_clock

    @property
    def registry(self) -> Registry:
        """The registry (created on first use)."""
        if self._registry is None:
            self._registry = self._registry_factory()
        return self._registry

    @property
    def endpoint(self) -> EndpointClient:
        """The endpoint client (created on first use)."""
        if self._endpoint is None:
            self._endpoint = self._endpoint_factory()
        return self._endpoint

    @property
    def aliases(self) -> AliasCache:
        """The alias cache (created on first use)."""
        if self._aliases is None:
            self._aliases = AliasCache(
                self.registry, self._alias_cache_seconds, self._clock, wall_clock=self._wall
            )
        return self._aliases

    def list_cities(
        self, caller: Caller, *, limit: int = DEFAULT_PAGE, next_token: str | None = None
    ) -> CityList:
        """Return a page of the cities ``caller`` may see, with version and metrics.

        Each of the key's patterns reads only its own key range, at most ``limit + 1``
        items (:meth:`Registry.list_cities_page`): no request scans the registry.

        Raises
        ------
        BadRequest
            ``limit`` outside 1..1000, or ``next_token`` not from an earlier page.
        """
        if not 1 <= limit <= MAX_PAGE:
            raise BadRequest(f"'limit' must be within 1..{MAX_PAGE}", field="limit")
        after = page_after(next_token) if next_token is not None else None
        cities, last = self.registry.list_cities_page(caller.patterns, after=after, limit=limit)
        now = self._wall()
        return CityList(
            cities=[city_summary(city, now) for city in cities],
            next=last,  # the token is the page's last city id
        )

    def get_city(self, caller: Caller, city: str) -> CityDetail:
        """Return a city's alias, published versions and uploads.

        Raises
        ------
        InvalidCityId, Forbidden, UnknownCity
        """
        validate_city_id(city)
        caller.require_city(city)
        record = self.registry.get_city(city)
        return city_detail(record, self.registry.list_runs(city), self._wall())

    def predict(
        self,
        caller: Caller,
        city: str,
        body: RequestBody,
        *,
        time_left_seconds: float | None = None,
    ) -> PredictionOutcome:
        """Price the houses in ``body`` with the city's current model.

        Parameters
        ----------
        time_left_seconds
            The invocation's remaining time; the deadline is shortened to fit it.

        Raises
        ------
        InvalidCityId, Forbidden, BadRequest, PayloadTooLarge, UnsupportedMediaType,
        UnknownCity, NoModelServing, ModelNotReady, ModelFailed, ModelMissing
            See the module docstring for their HTTP statuses.
        """
        validate_city_id(city)
        caller.require_city(city)
        rows = parse_prediction_rows(body)
        version = self.aliases.serving_version(city)
        deadline = self.deadline_seconds
        if time_left_seconds is not None:
            deadline = max(0.0, min(deadline, time_left_seconds - DEADLINE_MARGIN_SECONDS))
        started = time.perf_counter()
        prices = self.endpoint.invoke_csv(
            target_model(city, version), rows_to_csv(rows), deadline_seconds=deadline
        )
        latency_ms = (time.perf_counter() - started) * 1000
        if len(prices) != len(rows) or not all(math.isfinite(p) for p in prices):
            raise ModelFailed(
                f"model {target_model(city, version)} answered {len(prices)} predictions "
                f"for {len(rows)} rows, or a non-finite price"
            )
        return PredictionOutcome(
            response=PredictionResponse(
                city=city, model_version=version, predictions=[Price(price=p) for p in prices]
            ),
            rows=len(rows),
            latency_ms=latency_ms,
        )

    def rollback(self, caller: Caller, city: str, version: object) -> CitySummary:
        """Pin the city's alias to an earlier published version (admin keys only).

        An admin key may roll back any city, as the authorizer's policy allows
        (:func:`citymodels.auth.authorizer_policy`).

        Raises
        ------
        InvalidCityId, Forbidden, InvalidVersion, UnknownCity
            As for the other routes.
        UnknownRun, NotPublishable
            The version does not exist for the city, or was never published (409).
        """
        validate_city_id(city)
        caller.require_admin()
        if not isinstance(version, str):
            raise BadRequest("'version' must be a string", field="version")
        validate_version(version)  # a malformed id is the client's mistake, whatever the city
        self.registry.get_city(city)
        moved = self.registry.rollback(
            city, version, cutover_seconds=cutover_lead(self._alias_cache_seconds)
        )
        self.aliases.invalidate(city)
        return city_summary(moved, self._wall())


# -- the authorizer ------------------------------------------------------------------


def bearer_secret(header: str | None) -> str:
    """Return the key in an ``Authorization: Bearer <key>`` header.

    Raises
    ------
    Unauthorized
        The header is missing or not ``Bearer`` followed by one token.
    """
    if not header:
        raise Unauthorized("no Authorization header")
    scheme, _, secret = header.strip().partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret or " " in secret:
        raise Unauthorized("Authorization header is not 'Bearer <key>'")
    return secret


def authorize(
    registry: Registry, header: str | None, route_arn: APIGatewayRouteArn
) -> dict[str, Any]:
    """Return the REQUEST authorizer's answer for an ``Authorization`` header.

    The policy covers everything the key may do (:func:`citymodels.auth.authorizer_policy`),
    not only the route of ``route_arn`` (the event's ``parsed_arn``): API Gateway caches it
    by the header and reuses it for every route the key calls within the cache's TTL.

    Raises
    ------
    Unauthorized
        Missing or malformed header, unknown or revoked key (API Gateway answers 401).
    """
    key = registry.key_for_secret(bearer_secret(header))
    if key is None:
        raise Unauthorized("unknown or revoked API key")
    return authorizer_policy(
        route_arn, principal_id=key.key_id, patterns=key.cities, admin=key.admin
    )
