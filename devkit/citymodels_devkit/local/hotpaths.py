"""moto's costs that grow with the run rather than with the request, removed.

Found by profiling the aws process (``py-spy record --gil --subprocesses`` on
``bench/bench_onboarding.py --cities 1000 --rows 500``); each was a share of that
process's CPU that a real service does not pay:

- **EventBridge input paths** (~9 % at 100 cities, ~13 % at 1,000 with the event
  delivery they sit in): moto parses every target's ``InputPath``/``InputTransformer``
  paths with ``jsonpath_ng.ext.parse`` for every event, and each parse builds the
  grammar's LALR tables anew. A parsed path is immutable (``find`` only reads), so
  the paths are parsed once per distinct text.
- **S3 listings by prefix** (~9 % at 1,000 cities): moto's ``list_objects`` fetches
  every key object of the bucket (the last of its versions) to test its name against
  the prefix; a job's staging lists its input prefix, so each listing cost in
  proportion to every object ever written. Here the names are tested first and only
  the matching keys fetched; the answer is the same list in the same order.
- **DynamoDB update expressions** (~2 %): moto tokenises and parses the same
  ``UpdateExpression`` text on every write, twice. The parse is kept per text; moto's
  validator works on a deep copy of it, so the kept tree is never changed.
- **SQS receives** (~19 % at 1,000 cities, with 1,000 drops queued): for each message
  received, moto checks its retention period by building the queue's whole attribute
  map three times, and one attribute (``ApproximateNumberOfMessages``) walks every
  message of the queue: a receive cost in proportion to the queue's depth. Here the
  check reads the queue's retention period itself. A send (~7 %) built the same map
  to read one FIFO attribute, ``ContentBasedDeduplication``; while a message is sent,
  the map holds that attribute alone, as moto would give it.

- **DynamoDB update validation** (~7 % of the DynamoDB process at 1,000 cities):
  moto's validators walk the update expression's tree, and each rebuilt its map of
  node types to handlers twice for every node it visited. The map (fixed per
  validator: its node types and bound methods) is built once per validator.

:func:`install` patches the six places, once per process.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from moto.core.utils import unix_time  # what moto's own retention check compares with

__all__ = [
    "install",
    "list_objects",
    "nodes_to_be_processed",
    "process",
    "queue_attributes",
    "retained",
    "send_message",
]

_INSTALLED = False


def list_objects(list_all: Any, unfiltered: tuple[type, ...] = ()) -> Any:
    """Wrap moto's ``S3Backend.list_objects``: with a prefix, hand it a view of the
    bucket holding only the keys whose names start with it (buckets of the
    ``unfiltered`` types go to moto as they are)."""

    def listing(
        backend: Any,
        bucket: Any,
        prefix: str | None,
        delimiter: str | None,
        marker: str | None,
        max_keys: int | None,
    ) -> Any:
        keys: Any = getattr(bucket, "keys", None)
        if not prefix or isinstance(bucket, unfiltered) or not hasattr(keys, "getlist"):
            return list_all(backend, bucket, prefix, delimiter, marker, max_keys)
        names = [name for name in list(dict.keys(keys)) if name.startswith(prefix)]
        view = _Prefixed(bucket, keys, names)
        return list_all(backend, view, prefix, delimiter, marker, max_keys)

    return listing


def retained(backend: Any, queue_name: str, message: Any) -> bool:
    """moto's ``SQSBackend.is_message_valid_based_on_retention_period``, reading the
    queue's ``MessageRetentionPeriod`` (an int, as moto stores it) directly."""
    period = backend.get_queue(queue_name).message_retention_period
    return bool(period + message.sent_timestamp / 1000 > unix_time())


_SENDING = threading.local()
"""Set while this thread runs moto's ``SQSBackend.send_message``."""


def send_message(send: Any) -> Any:
    """Wrap moto's ``SQSBackend.send_message``: queues' attributes are cheap meanwhile
    (its signature kept: the state store binds its arguments by name)."""

    @functools.wraps(send)
    def sending(backend: Any, *args: Any, **kwargs: Any) -> Any:
        _SENDING.active = True
        try:
            return send(backend, *args, **kwargs)
        finally:
            _SENDING.active = False

    return sending


def queue_attributes(full: Any) -> property:
    """moto's ``Queue.attributes``; during a send, only what the send reads of it."""

    def attributes(queue: Any) -> dict[str, Any]:
        if not getattr(_SENDING, "active", False):
            return full(queue)  # type: ignore[no-any-return]
        if not queue.fifo_queue:  # moto lists the FIFO attributes for FIFO queues only
            return {}
        return {"ContentBasedDeduplication": str(queue.content_based_deduplication).lower()}

    return property(attributes)


def _handlers(traverser: Any) -> tuple[tuple[type, ...], Any]:
    """A moto ``DepthFirstTraverser``'s node types and its map to handlers, kept."""
    kept = traverser.__dict__.get("_cm_handlers")
    if kept is None:
        handlers = traverser._processing_map()
        kept = traverser.__dict__["_cm_handlers"] = (tuple(handlers), handlers)
    return kept  # type: ignore[no-any-return]


def nodes_to_be_processed(traverser: Any) -> tuple[type, ...]:
    """``DepthFirstTraverser.nodes_to_be_processed``, from the kept map."""
    return _handlers(traverser)[0]


def process(traverser: Any, node: Any) -> Any:
    """``DepthFirstTraverser.process``: the first handler whose type ``node`` is."""
    for node_type, handler in _handlers(traverser)[1].items():
        if isinstance(node, node_type):
            return handler(node)
    return None


class _Prefixed:
    """A bucket as ``list_objects`` reads it, with only the named keys."""

    def __init__(self, bucket: Any, keys: Any, names: list[str]) -> None:
        self._bucket = bucket
        self.keys = _Names(keys, names)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bucket, name)


class _Names:
    def __init__(self, keys: Any, names: list[str]) -> None:
        self._keys = keys
        self._names = names

    def items(self) -> Any:
        for name in self._names:
            versions = self._keys.getlist(name)
            if versions:  # deleted meanwhile: moto's own listing skips it too
                yield name, versions[-1]


def install() -> None:
    """Install the six (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    import importlib

    from moto.s3.models import FakeTableStorageBucket, S3Backend
    from moto.sqs.models import Queue, SQSBackend

    # moto imports it inside EventTemplateParser.parse, from the module, on each call
    jsonpath: Any = importlib.import_module("jsonpath_ng.ext")
    jsonpath.parse = functools.lru_cache(maxsize=1024)(jsonpath.parse)
    parser: Any = importlib.import_module("moto.dynamodb.parsing.expressions")
    tree: Any = importlib.import_module("moto.dynamodb.parsing.ast_nodes")
    tree.DepthFirstTraverser.nodes_to_be_processed = nodes_to_be_processed
    tree.DepthFirstTraverser.process = process
    make: Any = functools.lru_cache(maxsize=1024)(parser.UpdateExpressionParser.make.__func__)
    parser.UpdateExpressionParser.make = classmethod(make)
    # a table bucket (S3 Tables) is refused by moto's own check: leave it to moto
    unfiltered = (FakeTableStorageBucket,)
    S3Backend.list_objects = list_objects(S3Backend.list_objects, unfiltered)  # type: ignore[method-assign]
    SQSBackend.is_message_valid_based_on_retention_period = retained  # type: ignore[method-assign,assignment]
    SQSBackend.send_message = send_message(SQSBackend.send_message)  # type: ignore[method-assign]
    Queue.attributes = queue_attributes(Queue.attributes.fget)  # type: ignore[method-assign,assignment,attr-defined]
    _INSTALLED = True
