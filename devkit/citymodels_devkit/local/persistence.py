"""The local AWS endpoint's state on disk: snapshots plus a journal, restored on start.

LocalStack keeps its state with two strategies, *snapshots* (pickled moto backends,
taken on shutdown or on a schedule) and *replay* of recorded API calls. This module
combines them, in one directory (:class:`StateStore`):

``snapshot.pickle``
    moto's backends for the persisted services (:data:`PERSISTED_SERVICES`: S3,
    DynamoDB, SQS, EventBridge), pickled as moto's own objects (``FakeKey`` knows how
    to pickle its body), plus the state of each :class:`Participant` (the SageMaker job
    service, the S3 events not yet delivered). Written to a temporary file and renamed,
    so a snapshot is either whole or absent.
``journal-{generation}.log``
    Every change accepted since that snapshot, one framed record (length, CRC-32,
    pickle) per change, appended with one ``write()`` *before* the response that
    acknowledges it is sent. The page cache outlives the process, so a change a
    client saw acknowledged survives a SIGKILL of the whole stack; a torn last
    record (the process died mid-write, so nothing was acknowledged) is ignored.
    There is no ``fsync`` per record: a power cut may lose the last seconds.

What is journaled, and how it is replayed deterministically:

- S3: after each write to a key (``put_object``, which copies and multipart uploads
  also go through, and ``delete_object``), the key's whole list of versions as moto
  holds it. Replay puts the list back, so version ids (which the pipeline records and
  copies by) and ETags are the ones the clients saw; nothing is re-executed.
- SQS: each message sent (the message object, with its id) and each deletion (by
  message id, resolved from the receipt handle when it happened). Receives are not
  journaled: after a restore every message is visible at once, so what a function was
  handling when the stack died is delivered again (at least once, as SQS promises).
- DynamoDB: after each write request that succeeded (``PutItem``, ``UpdateItem``,
  ``DeleteItem``, ``BatchWriteItem``, ``TransactWriteItems``), the state of every item
  it wrote (or its absence), put back on replay; other changes (``CreateTable``...)
  as the request, replayed through moto (they are rare, and deterministic).
- Participants record what they own (see :class:`Participant`).

Bucket, table and queue creation and EventBridge rules are kept by snapshots only: the
local stack takes one as soon as it has started (and on ``local down``, and every
:attr:`StateStore.snapshot_interval` seconds when the journal is not empty, or when it
outgrows :attr:`StateStore.journal_limit`).

Restore (:meth:`StateStore.restore`) loads the snapshot, then replays the journals of
its generation and later ones, and starts a new journal.

A store may keep some of the services only (``services``): the local stack serves
DynamoDB in a process of its own, whose store keeps ``dynamodb`` in a subdirectory of
the state directory while the aws process's keeps the rest in the directory itself.
A store whose own directory is empty *adopts* its services' state from another
directory (``adopt_from``): what a stack that kept everything in one directory
wrote is restored, DynamoDB included, and written to the new place at once.
"""

from __future__ import annotations

import copyreg
import inspect
import io
import logging
import os
import pickle
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, cast

__all__ = [
    "PERSISTED_SERVICES",
    "Participant",
    "Restored",
    "StateStore",
    "StateUnreadable",
    "read_journal",
]

logger = logging.getLogger(__name__)

PERSISTED_SERVICES: Final = ("s3", "dynamodb", "sqs", "events")
"""moto services whose backends the snapshots hold (CloudWatch and Logs are not kept:
the endpoint's metrics are per run)."""

SNAPSHOT_NAME: Final = "snapshot.pickle"
_FORMAT: Final = 1
_HEADER: Final = struct.Struct("<II")  # payload length, CRC-32 of the payload
_JOURNAL_GLOB: Final = "journal-*.log"

DYNAMODB_READS: Final = frozenset(
    {
        "GetItem",
        "BatchGetItem",
        "Query",
        "Scan",
        "TransactGetItems",
        "DescribeTable",
        "DescribeTimeToLive",
        "DescribeContinuousBackups",
        "DescribeEndpoints",
        "DescribeLimits",
        "ListTables",
        "ListTagsOfResource",
    }
)
"""DynamoDB operations that change nothing (every other one is journaled)."""

_ITEM_WRITES: Final = frozenset(
    {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
)


def _written_items(operation: str, request: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """``(table, item or key)`` of each item a successful write request changed."""
    if operation == "PutItem":
        yield request["TableName"], request["Item"]
    elif operation in ("UpdateItem", "DeleteItem"):
        yield request["TableName"], request["Key"]
    elif operation == "BatchWriteItem":
        for table_name, writes in request["RequestItems"].items():
            for write in writes:
                if "PutRequest" in write:
                    yield table_name, write["PutRequest"]["Item"]
                else:
                    yield table_name, write["DeleteRequest"]["Key"]
    else:
        for entry in request["TransactItems"]:
            for action, field in (("Put", "Item"), ("Update", "Key"), ("Delete", "Key")):
                if action in entry:
                    yield entry[action]["TableName"], entry[action][field]


class StateUnreadable(RuntimeError):
    """The kept state cannot be restored (written by another version, or damaged).

    The message names the file and says how to start anyway (``local up --fresh``).
    """

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(
            f"the local stack's kept state in {path.parent} cannot be restored ({path.name}: "
            f"{why}): start empty with `citymodels local up --fresh` (it deletes that state)"
        )
        self.path, self.why = path, why

    def __reduce__(self) -> tuple[Any, ...]:  # raised in the aws process, shown by the main one
        return (StateUnreadable, (self.path, self.why))


def _moto_version() -> str:
    from importlib.metadata import version

    return version("moto")


class Participant(Protocol):
    """State kept beside moto's: snapshotted, journaled and restored by the store.

    A participant journals its changes with ``store.append(name, payload)`` and must
    not hold a lock of its own while it does (the store's lock is taken inside).
    """

    @property
    def name(self) -> str:
        """The participant's records in the journal carry this name."""

    def export_state(self) -> Any:
        """Return the whole state, picklable (called with the store's lock held)."""

    def load_state(self, state: Any) -> None:
        """Replace the state with one :meth:`export_state` returned."""

    def replay(self, payload: Any) -> None:
        """Apply one journaled change, in journal order, after :meth:`load_state`."""


@dataclass
class Restored:
    """What :meth:`StateStore.restore` found.

    Attributes
    ----------
    snapshot
        Whether a snapshot was loaded.
    records
        Journal records replayed.
    skipped
        Records that could not be applied (logged; e.g. a key of a bucket that no
        longer exists).
    seconds
        Wall time of the whole restore.
    """

    snapshot: bool
    records: int
    skipped: int
    seconds: float

    @property
    def empty(self) -> bool:
        """Nothing was there: the stack starts empty."""
        return not self.snapshot and self.records == 0


def _recreate_condition() -> threading.Condition:
    return threading.Condition()


def _dispatch_table() -> dict[type, Any]:
    # moto's objects hold locks (an SQS queue's Condition, S3 keys' locks): they are
    # pickled as fresh, unlocked ones. A dispatch table (by exact type) costs the C
    # pickler nothing for every other object, unlike reducer_override.
    table = dict(copyreg.dispatch_table)
    table[type(threading.Lock())] = lambda _lock: (threading.Lock, ())
    table[type(threading.RLock())] = lambda _lock: (threading.RLock, ())
    table[threading.Condition] = lambda _cond: (_recreate_condition, ())
    table[threading.Event] = lambda _event: (threading.Event, ())
    return table


def _dumps(value: Any) -> bytes:
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _dispatch_table()
    pickler.dump(value)
    return buffer.getvalue()


def read_journal(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield the ``(participant, payload)`` records of a journal file, in order.

    Stops at the first torn or corrupt record: the process died while writing it, so
    its change was never acknowledged.
    """
    data = path.read_bytes()
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        payload = data[start : start + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            logger.warning("%s: ignoring a torn record at byte %d", path, offset)
            return
        yield pickle.loads(payload)
        offset = start + length


def _holds_state(directory: Path) -> bool:
    """Whether a store wrote a snapshot or a journal in ``directory``."""
    return (directory / SNAPSHOT_NAME).exists() or any(directory.glob(_JOURNAL_GLOB))


def _generation(path: Path) -> int:
    return int(path.stem.split("-", 1)[1])


class StateStore:
    """Keeps the local AWS endpoint's state in ``directory`` (see the module's docs).

    Parameters
    ----------
    directory
        Where the snapshot and journals live (created if missing).
    account_id, region
        The moto account and region whose backends are kept (S3's is its partition).
    snapshot_interval
        Seconds between scheduled snapshots (taken only when the journal has records).
    journal_limit
        Journal bytes past which a snapshot is taken at the next check, so a restore
        never replays much.
    services
        The moto services kept (some of :data:`PERSISTED_SERVICES`); what the
        snapshots and journals hold of others is left alone.
    adopt_from
        Another store's directory to restore these services from while this one holds
        nothing yet (see the module's documentation).

    Examples
    --------
    >>> store = StateStore(Path(".citymodels/local/state"))  # doctest: +SKIP
    >>> store.restore(moto_app)        # before serving          # doctest: +SKIP
    >>> store.start_schedule()                                     # doctest: +SKIP
    >>> store.close()                  # final snapshot            # doctest: +SKIP
    """

    def __init__(
        self,
        directory: Path,
        *,
        account_id: str,
        region: str,
        snapshot_interval: float = 600.0,
        journal_limit: int = 64 << 20,
        services: tuple[str, ...] = PERSISTED_SERVICES,
        adopt_from: Path | None = None,
    ) -> None:
        unknown = set(services) - set(PERSISTED_SERVICES)
        if unknown:
            raise ValueError(f"not kept by a store: {sorted(unknown)}")
        self.directory = Path(directory)
        self.services = tuple(services)
        self.adopt_from = adopt_from
        self.account_id = account_id
        self.region = region
        self.snapshot_interval = snapshot_interval
        self.journal_limit = journal_limit
        # Held while a change is applied and journaled, and while a snapshot is
        # taken: a snapshot never holds half a change, and the journal's order is
        # the order changes were applied in.
        self.lock = threading.RLock()
        self._participants: dict[str, Participant] = {}
        self._fd: int | None = None
        self._generation = 0
        self._journal_bytes = 0
        self._wrapped: dict[int, tuple[Any, set[str]]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- set-up

    def register(self, participant: Participant) -> None:
        """Keep ``participant``'s state too (before :meth:`restore`)."""
        self._participants[participant.name] = participant

    @staticmethod
    def wipe(directory: Path) -> None:
        """Delete a state directory (``local up --fresh``)."""
        shutil.rmtree(directory, ignore_errors=True)

    def _backends(self) -> dict[str, dict[str, Any]]:
        """The persisted services' region backends of this account (created if new)."""
        from moto.backends import get_backend

        found: dict[str, dict[str, Any]] = {}
        for service in self.services:
            regions = get_backend(cast(Any, service))[self.account_id]
            region = "aws" if service == "s3" else self.region
            found[service] = {region: regions[region]}
        return found

    # -- journaling moto's backends

    def install(self) -> None:
        """Wrap the S3 and SQS backends' writes so that each is journaled.

        The wrappers are attributes of the backend instances (moto calls its own
        methods through ``self``, so copies and multipart uploads are covered), and
        go away with a moto reset.
        """
        backends = self._backends()
        if "s3" in backends:
            s3 = backends["s3"]["aws"]
            self._wrap(s3, "put_object", self._after_s3_key, names=("bucket_name", "key_name"))
            self._wrap(s3, "delete_object", self._after_s3_key, names=("bucket_name", "key_name"))
        if "sqs" in backends:
            sqs = backends["sqs"][self.region]
            self._wrap(sqs, "send_message", self._after_sqs_send, names=("queue_name",))
            self._wrap(sqs, "purge_queue", self._after_sqs_purge, names=("queue_name",))
            self._wrap_sqs_delete(sqs)

    def _wrap(
        self,
        backend: Any,
        method: str,
        after: Callable[..., None],
        *,
        names: tuple[str, ...],
    ) -> None:
        # The class's method, never an instance attribute a failed start may have left:
        # a wrapper is never wrapped again.
        original = getattr(type(backend), method).__get__(backend)
        signature = inspect.signature(original)
        store = self

        def journaled(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            with store.lock:
                result = original(*args, **kwargs)
                after(backend, result, *(bound.arguments[n] for n in names))
            return result

        setattr(backend, method, journaled)
        self._wrapped.setdefault(id(backend), (backend, set()))[1].add(method)

    def _wrap_sqs_delete(self, sqs: Any) -> None:
        original = type(sqs).delete_message.__get__(sqs)
        store = self

        def delete_message(queue_name: str, receipt_handle: str) -> None:
            with store.lock:
                queue = sqs.get_queue(queue_name)
                ids = [m.id for m in queue._messages if m.had_receipt_handle(receipt_handle)]
                original(queue_name, receipt_handle)
                if ids:
                    store.append("sqs", ("delete", queue_name, ids))

        sqs.delete_message = delete_message
        self._wrapped.setdefault(id(sqs), (sqs, set()))[1].add("delete_message")

    def _after_s3_key(self, backend: Any, _result: Any, bucket_name: str, key_name: str) -> None:
        bucket = backend.buckets.get(bucket_name)
        if bucket is None:
            return
        self.append("s3", (bucket_name, key_name, list(bucket.keys.getlist(key_name, []))))

    def _after_sqs_send(self, _backend: Any, message: Any, queue_name: str) -> None:
        self.append("sqs", ("send", queue_name, message))

    def _after_sqs_purge(self, _backend: Any, _result: Any, queue_name: str) -> None:
        self.append("sqs", ("purge", queue_name, []))

    def journal_dynamodb(self, operation: str, headers: Mapping[str, str], body: bytes) -> None:
        """Journal a DynamoDB write request that succeeded.

        Call with :attr:`lock` held, around the request. Item writes are journaled as
        the items' states after the write (replayed by putting them back, which is
        fast); anything else (``CreateTable``...) as the request, replayed through moto.
        """
        if operation not in _ITEM_WRITES:
            self.append("dynamodb", ("request", dict(headers), body))
            return
        import json

        backend = self._backends()["dynamodb"][self.region]
        states = []
        for table_name, attributes in _written_items(operation, json.loads(body)):
            table = backend.get_table(table_name)
            key = {
                name: attributes[name]
                for name in (table.hash_key_attr, table.range_key_attr)
                if name is not None and name in attributes
            }
            item = backend.get_item(table_name, key)
            states.append((table_name, key, None if item is None else item.to_json()["Attributes"]))
        self.append("dynamodb", ("items", states))

    # -- the journal

    @property
    def keeping(self) -> bool:
        """Whether changes are journaled (between :meth:`restore` and :meth:`close`)."""
        return self._fd is not None

    def append(self, participant: str, payload: Any) -> None:
        """Append one record, then return (the caller acknowledges the change after).

        One ``write()`` of the framed record to a file opened ``O_APPEND``: once it
        returns, the record is in the page cache and outlives this process.
        """
        if not self.keeping:
            return  # not restored yet, or closed: nothing is kept
        data = _dumps((participant, payload))
        frame = _HEADER.pack(len(data), zlib.crc32(data)) + data
        with self.lock:
            fd = self._fd  # closed meanwhile?
            if fd is None:
                return
            written = os.write(fd, frame)
            if written != len(frame):  # a regular file writes whole or raises (ENOSPC)
                raise OSError(f"short write to the journal ({written} of {len(frame)} bytes)")
            self._journal_bytes += len(frame)

    def _journal_path(self, generation: int) -> Path:
        return self.directory / f"journal-{generation:08d}.log"

    def _open_journal(self, generation: int) -> None:
        fd = os.open(self._journal_path(generation), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        old, self._fd = self._fd, fd
        self._generation = generation
        self._journal_bytes = 0
        if old is not None:
            os.close(old)

    # -- snapshots

    def snapshot(self) -> float:
        """Write a snapshot of everything and start a new journal; return its seconds.

        Changes wait while the state is pickled (in memory); the file is written after.
        """
        started = time.perf_counter()
        for attempt in range(3):
            try:
                with self.lock:
                    state = self._export()
                    data = _dumps(state)
                    generation = self._generation + 1
                    self._open_journal(generation)
                break
            except RuntimeError:  # a read mutated a container mid-pickle (SQS receive)
                if attempt == 2:
                    raise
        final = self.directory / SNAPSHOT_NAME
        temporary = final.with_suffix(".tmp")
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(final)
        directory_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)
        for path in self.directory.glob(_JOURNAL_GLOB):
            if _generation(path) < generation:
                path.unlink(missing_ok=True)
        return time.perf_counter() - started

    def _export(self) -> dict[str, Any]:
        moto_state: dict[str, dict[str, Any]] = {}
        for service, regions in self._backends().items():
            moto_state[service] = {}
            for region, backend in regions.items():
                skip = self._wrapped.get(id(backend), (None, set()))[1]
                moto_state[service][region] = {
                    k: v for k, v in vars(backend).items() if k not in skip
                }
        return {
            "format": _FORMAT,
            "moto_version": _moto_version(),
            "generation": self._generation + 1,
            "time": time.time(),
            "moto": moto_state,
            "participants": {n: p.export_state() for n, p in self._participants.items()},
        }

    # -- restore

    def restore(self, moto_app: Callable[..., Any]) -> Restored:
        """Load the snapshot, replay the journals, start a new journal.

        Call before the endpoint serves, after :meth:`register` and :meth:`install`.

        Parameters
        ----------
        moto_app
            moto's WSGI application, which DynamoDB requests are replayed through.
        """
        started = time.perf_counter()
        self.directory.mkdir(parents=True, exist_ok=True)
        adopted = (
            self.adopt_from is not None
            and not _holds_state(self.directory)
            and _holds_state(self.adopt_from)
        )
        source = self.adopt_from if adopted and self.adopt_from else self.directory
        snapshot_path = source / SNAPSHOT_NAME
        generation = 0
        loaded = False
        if snapshot_path.exists():
            try:
                state = pickle.loads(snapshot_path.read_bytes())
            except Exception as error:  # moto's classes changed (an upgrade), or damage
                raise StateUnreadable(snapshot_path, repr(error)) from error
            if state.get("format") != _FORMAT or state.get("moto") is None:
                raise StateUnreadable(snapshot_path, f"format {state.get('format')!r}")
            if state.get("moto_version") != _moto_version():
                raise StateUnreadable(
                    snapshot_path,
                    f"written with moto {state.get('moto_version')}, this is moto "
                    f"{_moto_version()}",
                )
            generation = int(state["generation"])
            self._load(state)
            loaded = True
        journals = sorted(
            (p for p in source.glob(_JOURNAL_GLOB) if _generation(p) >= generation),
            key=_generation,
        )
        records = skipped = 0
        backends = self._backends()
        for path in journals:
            try:
                found = list(read_journal(path))
            except Exception as error:  # a record of classes that changed (an upgrade)
                raise StateUnreadable(path, repr(error)) from error
            for participant, payload in found:
                if not self._keeps(participant, backends):
                    continue  # another store's record (a journal both once shared)
                records += 1
                try:
                    self._replay(participant, payload, moto_app, backends)
                except Exception as error:
                    skipped += 1
                    logger.warning("journal record of %s not restored: %r", participant, error)
        if "sqs" in backends:
            self._make_messages_visible()
        last = max([generation, *(_generation(p) for p in journals)])
        self._open_journal(last + 1)
        if adopted:  # kept here from now on: the other store no longer keeps it
            self.snapshot()
            logger.info("adopted the state of %s from %s", ", ".join(self.services), source)
        return Restored(loaded, records, skipped, time.perf_counter() - started)

    def _load(self, state: Mapping[str, Any]) -> None:
        backends = self._backends()
        for service, regions in state["moto"].items():
            for region, saved in regions.items():
                backend = backends.get(service, {}).get(region)
                if backend is None:
                    continue
                skip = self._wrapped.get(id(backend), (None, set()))[1]
                kept = {k: v for k, v in vars(backend).items() if k in skip}
                vars(backend).clear()
                vars(backend).update(saved)
                vars(backend).update(kept)
        for name, saved in state["participants"].items():
            participant = self._participants.get(name)
            if participant is not None:
                participant.load_state(saved)

    def _keeps(self, participant: str, backends: Mapping[str, Any]) -> bool:
        """Whether a journal record of ``participant`` is this store's to replay: a
        service it keeps, a participant registered with it, or (for a store keeping
        every service, which owns the journal alone) anything else, refused by
        :meth:`_replay` as unknown."""
        if participant in PERSISTED_SERVICES:
            return participant in backends
        if participant in self._participants:
            return True
        return set(self.services) == set(PERSISTED_SERVICES)

    def _replay(
        self,
        participant: str,
        payload: Any,
        moto_app: Callable[..., Any],
        backends: Mapping[str, Mapping[str, Any]],
    ) -> None:
        if participant == "s3":
            bucket_name, key_name, versions = payload
            keys = backends["s3"]["aws"].buckets[bucket_name].keys
            if versions:
                keys.setlist(key_name, versions)
            elif key_name in keys:
                keys.pop(key_name)
        elif participant == "sqs":
            action, queue_name, value = payload
            queue = backends["sqs"][self.region].get_queue(queue_name)
            if action == "send":
                queue._messages.append(value)
            elif action == "delete":
                gone = set(value)
                queue._messages = [m for m in queue._messages if m.id not in gone]
            else:
                queue._messages = []
        elif participant == "dynamodb":
            kind, *rest = payload
            if kind == "items":
                dynamodb = backends["dynamodb"][self.region]
                for table_name, key, attributes in rest[0]:
                    if attributes is None:
                        dynamodb.delete_item(table_name, key)
                    else:
                        dynamodb.put_item(table_name, attributes)
            else:
                _call_wsgi(moto_app, *rest)
        elif participant in self._participants:
            self._participants[participant].replay(payload)
        else:
            raise ValueError(f"unknown journal participant {participant!r}")

    def _make_messages_visible(self) -> None:
        # Messages received but not deleted when the stack stopped were being handled:
        # deliver them again now rather than after their visibility timeout.
        sqs = self._backends()["sqs"][self.region]
        for queue in sqs.queues.values():
            for message in queue._messages:
                message.visible_at = 0.0
            queue._pending_messages = set()

    # -- schedule and shutdown

    def start_schedule(self, check_every: float = 5.0) -> None:
        """Take snapshots in the background (see ``snapshot_interval``, ``journal_limit``).

        Idempotent: one schedule per store.
        """
        if self._thread is not None:
            return

        def run() -> None:
            last = time.monotonic()
            while not self._stop.wait(check_every):
                due = time.monotonic() - last >= self.snapshot_interval
                if self._journal_bytes and (due or self._journal_bytes >= self.journal_limit):
                    try:
                        self.snapshot()
                    except Exception:
                        logger.exception("scheduled snapshot failed (the journal still holds it)")
                    last = time.monotonic()

        self._thread = threading.Thread(target=run, name="state snapshots", daemon=True)
        self._thread.start()

    def close(self, *, snapshot: bool = True) -> None:
        """Stop the schedule, take a last snapshot (``local down``), close the journal."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if snapshot and self._fd is not None:
            self.snapshot()
        with self.lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            for backend, methods in self._wrapped.values():
                for method in methods:
                    vars(backend).pop(method, None)
            self._wrapped.clear()


def _call_wsgi(app: Callable[..., Any], headers: Mapping[str, str], body: bytes) -> None:
    from werkzeug.test import EnvironBuilder

    builder = EnvironBuilder(method="POST", path="/", headers=list(headers.items()), data=body)
    try:
        environ = builder.get_environ()
    finally:
        builder.close()
    status: list[str] = []

    def start_response(line: str, _headers: Any, _exc_info: Any = None) -> Any:
        status.append(line)
        return lambda _data: None

    for _chunk in app(environ, start_response):
        pass
    if status and not status[0].startswith("2"):
        raise RuntimeError(f"replayed request answered {status[0]}")
