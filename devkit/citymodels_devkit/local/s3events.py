"""AWS-shaped S3 ``Object Created`` events for the local stack, and the bus they go to.

S3 sends an ``Object Created`` event to EventBridge after every successful object
write on a bucket with EventBridge notifications enabled. moto can do the same, but
its events are not AWS's (``eTag`` for ``etag``, ``reason: "ObjectCreated"``, one
constant ``sequencer``), and the application mints run versions from the sequencer.
So the local stack leaves moto's bucket notifications off and emits the events itself,
from the front application (``local/aws.py``), which sees every S3 request:

- :func:`classify_s3_write` recognises the writes that create an object
  (``PutObject``, ``CopyObject``, ``CompleteMultipartUpload``, ``POST Object``) from
  the request alone, for path-style and virtual-hosted addressing;
- :class:`S3EventEmitter` builds the event once moto has answered 2xx, with the
  object's size and ETag read from moto's S3 backend, a fresh strictly increasing
  ``sequencer``, and sends it to the default event bus, where moto's EventBridge
  rules (and their SQS targets) filter and deliver it as they do any event.

The event, as S3 sends it::

    {"version": "0", "id": ..., "detail-type": "Object Created", "source": "aws.s3",
     "account": ..., "time": "2026-11-25T00:42:55Z", "region": ...,
     "resources": ["arn:aws:s3:::BUCKET"],
     "detail": {"version": "0", "bucket": {"name": BUCKET},
                "object": {"key": KEY, "size": N, "etag": HEX,
                           "version-id": ID,          # versioned buckets only
                           "sequencer": "0062E99A88DC407460"},
                "request-id": ..., "requester": ACCOUNT, "source-ip-address": IP,
                "reason": "PutObject"}}

The key is the object key itself (not URL-encoded, unlike S3's notification events).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import string
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol
from urllib.parse import parse_qsl, quote_plus

__all__ = [
    "OBJECT_CREATED",
    "EventBus",
    "MotoEventBus",
    "ObjectLookup",
    "RecordingEventBus",
    "S3EventEmitter",
    "S3Write",
    "Sequencer",
    "StoredObject",
    "classify_s3_write",
    "deliver_whole_events",
    "form_upload_key",
    "moto_object_lookup",
    "object_created_event",
    "signing_service",
]

logger = logging.getLogger(__name__)

OBJECT_CREATED: Final = "Object Created"
S3_SOURCE: Final = "aws.s3"
DEFAULT_ACCOUNT_ID: Final = "123456789012"
DEFAULT_REGION: Final = "us-east-1"

PUT_OBJECT: Final = "PutObject"
COPY_OBJECT: Final = "CopyObject"
COMPLETE_MULTIPART_UPLOAD: Final = "CompleteMultipartUpload"
POST_OBJECT: Final = "POST Object"

_CREDENTIAL_SCOPE = re.compile(r"Credential=([^,\s]+)")
_IPV4_HOST = re.compile(r"^(?:\d{1,3}\.){3}\d{1,3}$")
_REQUEST_ID_ALPHABET = string.ascii_uppercase + string.digits


class EventBus(Protocol):
    """Where events go: EventBridge ``PutEvents`` entries (``Source``, ``DetailType``,
    ``Detail`` as a JSON string, ``Resources``, ``Time``)."""

    def put_events(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Put events on the default event bus."""


class MotoEventBus:
    """The default event bus of moto's EventBridge, called in-process.

    Rules and targets created through the AWS endpoint (``PutRule``/``PutTargets``)
    filter and deliver the events, exactly as for ``PutEvents`` over HTTP. Calling
    the backend directly keeps each event's ``time`` as given (``PutEvents`` over
    the JSON protocol would turn it into a number) and costs no HTTP round trip.

    Parameters
    ----------
    account_id, region
        The account and region of the bus.
    """

    def __init__(self, account_id: str = DEFAULT_ACCOUNT_ID, region: str = DEFAULT_REGION):
        self.account_id = account_id
        self.region = region
        deliver_whole_events()
        # moto's backends are not written for concurrent writers; the front app's
        # threads and the job service's callbacks take turns.
        self._lock = threading.Lock()

    def put_events(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Put ``entries`` (``PutEvents`` shape, at most 10 at a time) on the default bus.

        ``Time`` may be a :class:`datetime` or epoch seconds; moto formats it as
        ``2026-11-25T00:42:55Z`` when it delivers the event to an SQS target.
        """
        from moto.events.models import events_backends

        backend = events_backends[self.account_id][self.region]
        prepared = []
        for entry in entries:
            item = dict(entry)
            when = item.get("Time")
            if isinstance(when, datetime):
                item["Time"] = int(when.timestamp())
            prepared.append(item)
        for start in range(0, len(prepared), 10):
            with self._lock:
                results = backend.put_events(prepared[start : start + 10])
            for result in results:
                if "ErrorCode" in result:
                    logger.error("PutEvents rejected an event: %s", result)


_AWS_EVENT_TEMPLATE: Final = (
    '{"version": "0", "id": "<id>", "detail-type": "<detail-type>", "source": "<source>", '
    '"account": "<account>", "time": <time>, "region": "<region>", '
    '"resources": <resources>, "detail": <detail>}'
)


def deliver_whole_events() -> None:
    """Make moto deliver events to targets whole, as EventBridge does.

    moto renders an event for a target without an ``InputTransformer`` through a
    default template that leaves out ``account`` (an event parser requiring it, as
    Powertools' ``EventBridgeModel`` does, then rejects it). This sets that template
    to the whole event, in EventBridge's field order. Idempotent; affects moto in
    this process only.
    """
    from moto.events.utils import EventTemplateParser

    EventTemplateParser.DEFAULT_EVENT_INPUT_TEMPLATE = _AWS_EVENT_TEMPLATE


class RecordingEventBus:
    """An event bus that keeps what it is given (for tests and ``--dry-run`` tools)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def put_events(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Record ``entries``."""
        with self._lock:
            self.entries.extend(dict(e) for e in entries)


class Sequencer:
    """S3-style object sequencers: upper-case hex, fixed width, strictly increasing.

    Built from the wall clock in nanoseconds, so sequencers also increase across
    restarts of the local stack, and from a counter, so two writes in the same
    nanosecond still get increasing values. 18 hex digits, as S3's.
    """

    WIDTH: Final = 18

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> str:
        """Return a sequencer greater than every one returned before."""
        with self._lock:
            self._last = max(self._last + 1, time.time_ns())
            return f"{self._last:0{self.WIDTH}X}"


@dataclass(frozen=True)
class S3Write:
    """An S3 request that creates an object if it succeeds.

    Attributes
    ----------
    reason
        The event's ``reason``: ``PutObject``, ``CopyObject``,
        ``CompleteMultipartUpload`` or ``POST Object``.
    bucket
        The bucket.
    key
        The object key (decoded); empty for ``POST Object``, whose key is in the form.
    """

    reason: str
    bucket: str
    key: str


def signing_service(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """Return the SigV4 credential scope's service (``s3``, ``sagemaker``...), if signed.

    Parameters
    ----------
    headers
        Request headers, lower-case names.
    query
        Query parameters (a presigned URL carries ``X-Amz-Credential`` there).
    """
    credential = None
    authorization = headers.get("authorization")
    if authorization:
        match = _CREDENTIAL_SCOPE.search(authorization)
        if match is None:
            return None
        credential = match.group(1)
    else:
        credential = query.get("X-Amz-Credential")
    if not credential:
        return None
    parts = credential.split("/")
    # AKID/20261125/us-east-1/s3/aws4_request
    return parts[3].lower() if len(parts) == 5 else None


def _virtual_host_bucket(host: str) -> str | None:
    """Return the bucket of a virtual-hosted-style request, as moto decides it.

    moto (``S3Response.subdomain_based_buckets``) uses path-style for ``localhost``,
    IP addresses, dotless host names and ``s3[.-]REGION.amazonaws.com``, and takes
    the first label of any other host as the bucket (``bucket.localhost:4566``).
    """
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if (
        not name
        or name.startswith(("localhost", "localstack", "host.docker.internal", "["))
        or "." not in name
        or _IPV4_HOST.match(name)
        or name.endswith(".svc.cluster.local")
        or name == "s3.amazonaws.com"
        or re.match(r"s3[.\-](?:(?:dualstack|fips)[.\-])?[^.]*\.amazonaws\.com$", name)
    ):
        return None
    if name.endswith(".amazonaws.com"):
        match = re.match(r"(.+?)\.s3[.\-]", name)
        return match.group(1) if match else None
    return name.split(".", 1)[0]


def classify_s3_write(
    method: str,
    path: str,
    query_string: str,
    headers: Mapping[str, str],
) -> S3Write | None:
    """Recognise an S3 request that creates an object.

    Parameters
    ----------
    method
        HTTP method.
    path
        The request path, percent-decoded (an ASGI scope's ``path``).
    query_string
        The raw query string.
    headers
        Request headers with lower-case names (``host``, ``authorization``,
        ``x-amz-copy-source``, ``content-type``).

    Returns
    -------
    S3Write or None
        None for every other request: reads, deletes, ``CreateMultipartUpload``,
        ``UploadPart``, subresource writes (``?tagging``, ``?acl``...), requests to
        other services.
    """
    if method not in ("PUT", "POST"):
        return None
    query = dict(parse_qsl(query_string, keep_blank_values=True))
    service = signing_service(headers, query)
    if service is None:
        # moto serves unsigned requests it cannot place as S3, so do we; but an
        # unsigned request naming another service's operation is not S3.
        if "x-amz-target" in headers or "Action" in query:
            return None
    elif service != "s3":
        return None
    # What remains of the query after SigV4 presigning and botocore's ``x-id``
    # (``?x-id=PutObject``) says which operation this is.
    params = {k for k in query if k != "x-id" and not k.lower().startswith("x-amz-")}
    bucket = _virtual_host_bucket(headers.get("host", ""))
    if bucket is None:
        bucket, _, key = path.lstrip("/").partition("/")
    else:
        key = path[1:] if path.startswith("/") else path
    if not bucket:
        return None
    if method == "PUT":
        if not key or params:
            return None
        reason = COPY_OBJECT if "x-amz-copy-source" in headers else PUT_OBJECT
        return S3Write(reason, bucket, key)
    if key:
        if "uploadId" in params and "uploads" not in params:
            return S3Write(COMPLETE_MULTIPART_UPLOAD, bucket, key)
        return None
    if not params and headers.get("content-type", "").lower().startswith("multipart/form-data"):
        return S3Write(POST_OBJECT, bucket, "")
    return None


def form_upload_key(body: bytes, content_type: str) -> str | None:
    """Return the object key of a ``POST Object`` form upload (``${filename}`` filled in)."""
    import io

    from werkzeug.formparser import parse_form_data

    environ = {
        "REQUEST_METHOD": "POST",
        "CONTENT_TYPE": content_type,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    _stream, form, files = parse_form_data(environ)
    key = form.get("key")
    if key is None:
        return None
    upload = files.get("file")
    if "${filename}" in key and upload is not None and upload.filename:
        key = key.replace("${filename}", upload.filename)
    return str(key)


def object_created_event(
    *,
    bucket: str,
    key: str,
    size: int,
    etag: str,
    sequencer: str,
    reason: str,
    version_id: str | None = None,
    request_id: str,
    requester: str,
    source_ip: str,
    account_id: str = DEFAULT_ACCOUNT_ID,
    region: str = DEFAULT_REGION,
    time: datetime | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """Return an ``Object Created`` event exactly as S3 sends it to EventBridge.

    Returns
    -------
    dict
        The whole event; its ``detail`` is what :class:`S3EventEmitter` puts on the bus.
    """
    when = (time or datetime.now(UTC)).astimezone(UTC)
    # S3 URL-encodes object keys in its event notifications ("red flower.jpg" becomes
    # "red+flower.jpg"); Powertools' S3 EventBridge data class decodes them accordingly.
    encoded_key = quote_plus(key, safe="/")
    obj: dict[str, Any] = {"key": encoded_key, "size": size, "etag": etag.strip('"')}
    if version_id:
        obj["version-id"] = version_id
    obj["sequencer"] = sequencer
    return {
        "version": "0",
        "id": event_id or str(uuid.uuid4()),
        "detail-type": OBJECT_CREATED,
        "source": S3_SOURCE,
        "account": account_id,
        "time": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {
            "version": "0",
            "bucket": {"name": bucket},
            "object": obj,
            "request-id": request_id,
            "requester": requester,
            "source-ip-address": source_ip,
            "reason": reason,
        },
    }


@dataclass(frozen=True)
class StoredObject:
    """What the event needs to know about the object moto stored."""

    size: int
    etag: str
    version_id: str | None


class ObjectLookup(Protocol):
    """Reads an object's size, ETag and version as stored (by default, moto's backend)."""

    def __call__(self, bucket: str, key: str, version_id: str | None) -> StoredObject | None:
        """Return the object, or None if it is not there (any more)."""


def moto_object_lookup(account_id: str = DEFAULT_ACCOUNT_ID) -> ObjectLookup:
    """Return an :class:`ObjectLookup` reading moto's S3 backend in-process."""

    def lookup(bucket: str, key: str, version_id: str | None) -> StoredObject | None:
        from moto.s3.models import s3_backends

        backend = s3_backends[account_id]["aws"]
        try:
            stored = backend.get_object(bucket, key, version_id=version_id)
        except Exception:  # no such bucket (deleted meanwhile): no event to send
            return None
        if stored is None:
            return None
        version = getattr(stored, "version_id", None)
        return StoredObject(
            size=int(stored.size),
            etag=str(stored.etag).strip('"'),
            version_id=None if version in (None, "null") else str(version),
        )

    return lookup


class S3EventEmitter:
    """Emits ``Object Created`` events for the buckets registered with it.

    Parameters
    ----------
    bus
        Where the events go (:class:`MotoEventBus` in the local stack).
    buckets
        Buckets with EventBridge notifications on (more with :meth:`enable`).
    account_id, region
        The account (also the ``requester``) and region of the events.
    lookup
        Reads the stored object's size and ETag; moto's S3 backend by default.
    """

    def __init__(
        self,
        bus: EventBus,
        buckets: Iterable[str] = (),
        *,
        account_id: str = DEFAULT_ACCOUNT_ID,
        region: str = DEFAULT_REGION,
        lookup: ObjectLookup | None = None,
    ) -> None:
        self.bus = bus
        self.account_id = account_id
        self.region = region
        self.lookup = lookup or moto_object_lookup(account_id)
        self.sequencer = Sequencer()
        self._buckets = set(buckets)

    def enable(self, bucket: str) -> None:
        """Send events for ``bucket`` (EventBridge notifications on)."""
        self._buckets.add(bucket)

    def disable(self, bucket: str) -> None:
        """Stop sending events for ``bucket``."""
        self._buckets.discard(bucket)

    def watches(self, bucket: str) -> bool:
        """Whether writes to ``bucket`` produce events."""
        return bucket in self._buckets

    @property
    def active(self) -> bool:
        """Whether any bucket produces events (cheap: checked on every S3 write)."""
        return bool(self._buckets)

    @property
    def buckets(self) -> frozenset[str]:
        """The buckets that produce events."""
        return frozenset(self._buckets)

    def observe(
        self,
        write: S3Write,
        response_headers: Mapping[str, str],
        *,
        request_body: bytes | None = None,
        request_content_type: str = "",
    ) -> tuple[S3Write, StoredObject] | None:
        """Read what a successful write stored, as moto answers it.

        Called when moto's response starts, before the client has it, so a client's
        next write to the same key cannot have replaced the object yet.

        Parameters
        ----------
        write
            The write, from :func:`classify_s3_write`.
        response_headers
            moto's response headers (lower-case names).
        request_body, request_content_type
            The form of a ``POST Object`` upload, which holds its key.

        Returns
        -------
        tuple or None
            The write with its key, and the object; None when the bucket is not
            watched, or the object is not there.
        """
        if not self.watches(write.bucket):
            return None
        if write.reason == POST_OBJECT:
            key = form_upload_key(request_body or b"", request_content_type) or ""
            if not key:
                return None
            write = S3Write(write.reason, write.bucket, key)
        version_id = response_headers.get("x-amz-version-id") or None
        stored = self.lookup(write.bucket, write.key, version_id)
        if stored is None:
            logger.warning(
                "no object s3://%s/%s after a %s: no event", write.bucket, write.key, write.reason
            )
            return None
        return write, stored

    def emit(
        self,
        write: S3Write,
        response_headers: Mapping[str, str],
        *,
        source_ip: str,
        stored: StoredObject | None = None,
        sequencer: str | None = None,
        request_body: bytes | None = None,
        request_content_type: str = "",
        when: datetime | None = None,
    ) -> dict[str, Any] | None:
        """Send the event of a write that moto answered with 2xx.

        Parameters
        ----------
        write
            The write (its key filled in for a ``POST Object``, see :meth:`observe`).
        response_headers
            moto's response headers (lower-case names): ``etag``,
            ``x-amz-version-id``, ``x-amz-request-id``.
        source_ip
            The client's address.
        stored
            The object as :meth:`observe` saw it; looked up now if None.
        sequencer
            The sequencer taken when the response arrived (the write's order);
            a fresh one if None.
        request_body, request_content_type
            The form of a ``POST Object`` upload (when ``stored`` is None).
        when
            When the write was answered; now if None. An event sent again after a
            restart keeps its time, so the run it names (minted from the time and the
            sequencer) is the same.

        Returns
        -------
        dict or None
            The event sent, or None when the bucket is not watched or the object
            is already gone.
        """
        if stored is None:
            observed = self.observe(
                write,
                response_headers,
                request_body=request_body,
                request_content_type=request_content_type,
            )
            if observed is None:
                return None
            write, stored = observed
        elif not self.watches(write.bucket):
            return None
        version_id = response_headers.get("x-amz-version-id") or stored.version_id
        etag = (response_headers.get("etag") or "").strip('"') or stored.etag
        now = when or datetime.now(UTC)
        event = object_created_event(
            bucket=write.bucket,
            key=write.key,
            size=stored.size,
            etag=etag,
            sequencer=sequencer or self.sequencer.next(),
            reason=write.reason,
            version_id=version_id,
            request_id=response_headers.get("x-amz-request-id") or _request_id(),
            requester=self.account_id,
            source_ip=source_ip,
            account_id=self.account_id,
            region=self.region,
            time=now,
        )
        self.bus.put_events(
            [
                {
                    "Source": event["source"],
                    "DetailType": event["detail-type"],
                    "Detail": json.dumps(event["detail"]),
                    "Resources": event["resources"],
                    "Time": now,
                }
            ]
        )
        return event


def _request_id() -> str:
    return "".join(secrets.choice(_REQUEST_ID_ALPHABET) for _ in range(16))
