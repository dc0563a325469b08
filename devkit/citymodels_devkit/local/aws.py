"""The local stack's single AWS endpoint: one port for every AWS API the application uses.

:func:`build_aws_app` returns an ASGI application that routes each request:

- ``POST /endpoints/{name}/invocations`` (SageMaker Runtime ``InvokeEndpoint``) goes
  to the endpoint object registered for ``{name}`` (the local multi-model endpoint),
  natively in ASGI: the hot path. An endpoint that can answer without blocking (a
  model already in memory) is called on the event loop; anything else runs in a
  thread pool. An unknown endpoint gets SageMaker's ``ValidationError``.
- The SageMaker job operations (``X-Amz-Target: SageMaker.CreateProcessingJob``...,
  :data:`~.sagemaker.responses.OPERATIONS`) go to the :class:`~.sagemaker.models.JobService`,
  which runs the jobs and emits their state-change events; ``ListTags`` of its jobs too.
- DynamoDB (``X-Amz-Target: DynamoDB_20120810.*``), when it is served by another
  process (``dynamodb_url``: the local stack's), is forwarded there, answer as given
  (:class:`Forwarder`); that process serves :func:`build_dynamodb_app`.
- Everything else goes to moto, in-process: ``DomainDispatcherApplication(
  create_backend_app)`` on a thread pool (:class:`WsgiOnThreads`), with the
  request as it arrived (headers, raw path, query, body).
- S3 writes that create an object on a bucket registered for events
  (``PutObject``, ``CopyObject``, ``CompleteMultipartUpload``, ``POST Object``) are
  followed, once moto answered 2xx, by an AWS-shaped ``Object Created`` event on
  the default event bus (:mod:`.s3events`).

:class:`LocalAwsServer` serves such an app with uvicorn (httptools, asyncio loop) in a
background thread.

The endpoint objects follow a small protocol (:class:`Endpoint`): ``invoke(target_model,
body, content_type, accept)`` returns the response: an object with a ``render()`` giving
``(status, headers, body)`` (the local MME's ``InvokeResult``), such a tuple, or an
object with those attributes. Optionally
``invoke_nowait(...)`` (same arguments) answers at once or returns None when it would
have to wait (load a model), and ``is_loaded(target_model)`` says whether a call would
be answered from memory; either lets a warm call skip the thread hop.
"""

from __future__ import annotations

import asyncio
import contextvars
import http.client
import io
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import quote, urlsplit

from citymodels_devkit.local.persistence import (
    DYNAMODB_READS,
    PERSISTED_SERVICES,
    Restored,
    StateStore,
)
from citymodels_devkit.local.s3events import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_REGION,
    POST_OBJECT,
    EventBus,
    MotoEventBus,
    S3EventEmitter,
    classify_s3_write,
)
from citymodels_devkit.local.sagemaker.exceptions import SageMakerError
from citymodels_devkit.local.sagemaker.models import JobService
from citymodels_devkit.local.sagemaker.responses import OPERATIONS, handle

__all__ = [
    "AwsApp",
    "Endpoint",
    "Forwarder",
    "InvocationsApp",
    "LocalAwsServer",
    "MotoApp",
    "RemoteEndpoint",
    "build_aws_app",
    "build_dynamodb_app",
]

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
WSGIApp = Callable[..., Any]

DEFAULT_PORT: Final = 4566
_INVOCATIONS_PREFIX: Final = "/endpoints/"
_INVOCATIONS_SUFFIX: Final = "/invocations"
_JSON_11: Final = b"application/x-amz-json-1.1"
_DYNAMODB: Final = b"DynamoDB_"  # X-Amz-Target of DynamoDB's operations


class Endpoint(Protocol):
    """What ``POST /endpoints/{name}/invocations`` is handed to.

    ``invoke`` gets the ``X-Amzn-SageMaker-Target-Model``, the body, ``Content-Type``
    and ``Accept`` (``""`` for a header not sent) and returns the response: an object
    with ``render() -> (status, headers, body)`` (``headers`` as ASGI wants them:
    lower-case ``bytes`` pairs), or a ``(status, headers, body)`` tuple, or an object
    with ``status``, ``headers`` and ``body`` attributes (``headers`` a mapping or
    ``(name, value)`` pairs of ``str``).
    """

    def invoke(self, target_model: str, body: bytes, content_type: str, accept: str) -> Any:
        """Answer one invocation."""


_HOP_BY_HOP: Final = frozenset({"connection", "keep-alive", "transfer-encoding", "date", "server"})


class Forwarder:
    """Sends requests to another process of the local stack over HTTP, and gives back
    its answers as they are: one keep-alive connection per sending thread, a request
    sent once more on a connection the other side had closed.

    Parameters
    ----------
    url
        ``http://host:port`` of the process.
    timeout
        Seconds to wait for an answer.
    """

    def __init__(self, url: str, timeout: float = 120.0) -> None:
        parts = urlsplit(url)
        self.url, self.timeout = url, timeout
        self._address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._local = threading.local()

    def send(
        self, method: str, target: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Send one request (``target``: path and query); return status, headers, body."""
        for attempt in (0, 1):  # a kept-alive connection the other side closed: once more
            connection = getattr(self._local, "connection", None)
            if connection is None:
                connection = http.client.HTTPConnection(*self._address, timeout=self.timeout)
                self._local.connection = connection
            try:
                connection.request(method, target, body, dict(headers))
                response = connection.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException):
                connection.close()
                self._local.connection = None
                if attempt:
                    raise
                continue
            pairs = [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in response.getheaders()
                if name.lower() not in _HOP_BY_HOP
            ]
            return response.status, pairs, payload
        raise AssertionError("unreachable")


class RemoteEndpoint:
    """An :class:`Endpoint` served by another process: invocations forwarded over HTTP.

    The local stack runs its endpoint in a process of its own (:mod:`.processes`); the
    AWS endpoint forwards the invocations it receives (the CLI's, the SageMaker SDK's)
    there, answer as given. One keep-alive connection per invoking thread.

    Parameters
    ----------
    url
        ``http://host:port`` of the process serving the endpoint's invocations.
    name
        The endpoint's name (the path is ``/endpoints/{name}/invocations``).
    timeout
        Seconds to wait for an answer (a cold load included).
    """

    def __init__(self, url: str, name: str, timeout: float = 120.0) -> None:
        self.url, self.name, self.timeout = url, name, timeout
        self._path = f"{_INVOCATIONS_PREFIX}{quote(name, safe='')}{_INVOCATIONS_SUFFIX}"
        self._forwarder = Forwarder(url, timeout)

    def invoke(
        self, target_model: str, body: bytes, content_type: str, accept: str
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Forward one invocation; return the endpoint's status, headers and body."""
        headers = {
            name: value
            for name, value in (
                ("X-Amzn-SageMaker-Target-Model", target_model),
                ("Content-Type", content_type),
                ("Accept", accept),
            )
            if value
        }
        return self._forwarder.send("POST", self._path, body, headers)


@dataclass(frozen=True)
class _Registered:
    endpoint: Endpoint
    invoke_nowait: Callable[[str, bytes, str, str], Any] | None
    is_loaded: Callable[[str], bool] | None


def _render(result: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Turn an endpoint's answer into ASGI status, headers and body."""
    render = getattr(result, "render", None)
    if render is not None:
        status, raw, body = render()
        return int(status), list(raw), bytes(body)
    if isinstance(result, tuple) and len(result) == 3:
        status, headers, body = result
    else:
        status, headers, body = result.status, result.headers, result.body
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    if isinstance(body, str):
        body = body.encode("utf-8")
    raw = [
        (
            k.lower() if isinstance(k, bytes) else str(k).lower().encode("latin-1"),
            v if isinstance(v, bytes) else str(v).encode("latin-1"),
        )
        for k, v in pairs
    ]
    if not any(k == b"content-length" for k, _ in raw):
        raw.append((b"content-length", str(len(body)).encode()))
    return int(status), raw, bytes(body)


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then defers to the real one (disconnect)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _json_headers(body: bytes, content_type: bytes = _JSON_11) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"x-amzn-requestid", str(uuid.uuid4()).encode()),
    ]


class WsgiOnThreads:
    """moto's WSGI application under ASGI, one hand-off per request.

    a2wsgi's ``WSGIMiddleware`` streams: the body is read and each part of the answer
    sent through the event loop from the WSGI thread, a blocking round trip each (at
    least three per request). moto reads whole bodies and answers with whole ones, so
    here the body is read on the loop first, the application runs on a thread of the
    pool with a2wsgi's own environ (``build_environ``), and its whole answer comes back
    with the one future: a third of the aws process's CPU was that plumbing at 1,000
    cities.

    Parameters
    ----------
    app
        The WSGI application.
    workers
        Threads running it (SQS long polls each hold one while they wait).
    """

    def __init__(self, app: WSGIApp, workers: int = 16) -> None:
        from a2wsgi.wsgi import build_environ

        self.app = app
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="moto")
        self._environ: Any = build_environ

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one HTTP request."""
        body = await _read_body(receive)
        loop = asyncio.get_running_loop()
        call = partial(contextvars.copy_context().run, self._call, scope, body)
        status, headers, payload = await loop.run_in_executor(self.executor, call)
        await _respond(send, status, headers, payload)

    def _call(self, scope: Scope, body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        environ = self._environ(scope, io.BytesIO(body))
        started: list[Any] = []
        written: list[bytes] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            if exc_info is not None and started:
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = [status, headers]
            return written.append

        result = self.app(environ, start_response)
        try:
            written.extend(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = started
        pairs = [
            (name.strip().encode("latin-1").lower(), value.strip().encode("latin-1"))
            for name, value in headers
        ]
        return int(status.split(" ", 1)[0]), pairs, b"".join(written)

    def close(self) -> None:
        """Stop the threads (requests still running finish on their own)."""
        self.executor.shutdown(wait=False, cancel_futures=True)


class _MotoEnviron:
    """Completes a2wsgi's WSGI environ the way moto's own server builds it.

    moto matches S3 keys against the raw, still percent-encoded path (``RAW_URI``),
    keeps the spelling of ``x-amz-meta-*`` headers with underscores, and reads a body
    sent without ``Content-Length`` (chunked; uvicorn has de-chunked it) only when
    the input is marked terminated.
    """

    def __init__(self, app: WSGIApp, store: StateStore | None = None) -> None:
        from moto.core.request import (
            PRESERVED_HEADER_NAMES_ENVIRON_KEY,
            environ_key_for_header,
            should_preserve_original_header_name,
        )

        self.app = app
        self.store = store
        # moto's DynamoDB updates items in place and checks conditions without a lock:
        # concurrent requests could read half-written items or both pass one
        # conditional write. DynamoDB is atomic per item, so its calls are serialised.
        self._dynamodb = threading.Lock()
        self._preserved_key = PRESERVED_HEADER_NAMES_ENVIRON_KEY
        self._environ_key = environ_key_for_header
        self._preserve = should_preserve_original_header_name

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        scope = environ.get("asgi.scope")
        if scope is not None:
            raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
            query = scope.get("query_string", b"")
            uri = raw_path + (b"?" + query if query else b"")
            environ["RAW_URI"] = environ["REQUEST_URI"] = uri.decode("latin-1")
            names = {}
            for name, _value in scope["headers"]:
                text = name.decode("latin-1")
                if self._preserve(text):
                    names[self._environ_key(text)] = text
            if names:
                environ[self._preserved_key] = names
        if "CONTENT_LENGTH" not in environ:
            environ["wsgi.input_terminated"] = True
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target.startswith("DynamoDB_"):
            with self._dynamodb:
                operation = target.partition(".")[2]
                if self.store is None or operation in DYNAMODB_READS:
                    return list(self.app(environ, start_response))
                return self._journaled(self.store, environ, start_response, target)
        return self.app(environ, start_response)

    def _journaled(
        self, store: StateStore, environ: dict[str, Any], start_response: Any, target: str
    ) -> list[bytes]:
        """Serve a DynamoDB write; journal it, if it succeeded, before it is answered."""
        import io

        body = environ["wsgi.input"].read()
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        answered: list[tuple[str, Any, Any]] = []

        def capture(line: str, headers: Any, exc_info: Any = None) -> Any:
            # Held back until the change is journaled and the store's lock released:
            # a bridge that answered at start_response could acknowledge it sooner.
            answered.append((line, headers, exc_info))
            return lambda _data: None

        headers = {
            key[5:].replace("_", "-").title(): value
            for key, value in environ.items()
            if key.startswith("HTTP_") and key != "HTTP_CONTENT_LENGTH"
        }
        headers["Content-Type"] = environ.get("CONTENT_TYPE", "")
        with store.lock:
            chunks = list(self.app(environ, capture))
            if answered and answered[0][0].startswith("2"):
                store.journal_dynamodb(target.partition(".")[2], headers, body)
        start_response(*answered[0])
        return chunks


class _PendingEvents:
    """S3 writes acknowledged whose ``Object Created`` event is not yet on the bus.

    A participant of the :class:`StateStore`: a write's event is journaled before the
    write is answered, and marked sent once the bus has it, so an event lost with the
    process (SIGKILL between the answer and the event) is sent after the restart.
    """

    name = "s3events"

    def __init__(self) -> None:
        self.pending: dict[str, dict[str, Any]] = {}
        self.journal: Callable[[str, Any], None] | None = None
        self._lock = threading.Lock()

    def add(self, event_id: str, emit_arguments: dict[str, Any]) -> None:
        with self._lock:
            self.pending[event_id] = emit_arguments
        if self.journal is not None:
            self.journal(self.name, ("pending", event_id, emit_arguments))

    def sent(self, event_id: str) -> None:
        with self._lock:
            self.pending.pop(event_id, None)
        if self.journal is not None:
            self.journal(self.name, ("sent", event_id, None))

    def export_state(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self.pending)

    def load_state(self, state: dict[str, dict[str, Any]]) -> None:
        with self._lock:
            self.pending = dict(state)

    def replay(self, payload: tuple[str, str, Any]) -> None:
        action, event_id, emit_arguments = payload
        with self._lock:
            if action == "pending":
                self.pending[event_id] = emit_arguments
            else:
                self.pending.pop(event_id, None)


class InvocationsApp:
    """SageMaker Runtime's ``InvokeEndpoint``: the hot path, natively in ASGI.

    The :class:`AwsApp` routes ``POST /endpoints/{name}/invocations`` here; the
    endpoint's own process serves one of these alone (:mod:`.processes`).

    Parameters
    ----------
    account_id
        Named in the ``ValidationError`` of an unknown endpoint.
    invoke_threads
        Threads for invocations that may block (cold models).
    """

    def __init__(self, account_id: str = DEFAULT_ACCOUNT_ID, invoke_threads: int = 16) -> None:
        self.account_id = account_id
        self.timings: list[int] | None = None
        """While a list: each invocation's time in this app, ns (benchmarks set it)."""
        self._endpoints: dict[str, _Registered] = {}
        self._invoke_pool = ThreadPoolExecutor(invoke_threads, thread_name_prefix="invoke")

    def register_endpoint(self, name: str, endpoint: Endpoint) -> None:
        """Serve ``POST /endpoints/{name}/invocations`` with ``endpoint``."""
        self._endpoints[name] = _Registered(
            endpoint,
            getattr(endpoint, "invoke_nowait", None),
            getattr(endpoint, "is_loaded", None),
        )

    def unregister_endpoint(self, name: str) -> None:
        """Stop serving endpoint ``name`` (it answers ValidationError again)."""
        self._endpoints.pop(name, None)

    @property
    def endpoint_names(self) -> frozenset[str]:
        """The endpoints served."""
        return frozenset(self._endpoints)

    def close(self) -> None:
        """Stop the invocation threads."""
        self._invoke_pool.shutdown(wait=False, cancel_futures=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve invocations; anything else is a 404 (this app serves nothing else)."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if not (
            scope["method"] == "POST"
            and path.startswith(_INVOCATIONS_PREFIX)
            and path.endswith(_INVOCATIONS_SUFFIX)
            and await self.invocation(scope, receive, send, path)
        ):
            await self._runtime_error(send, 404, "UnknownOperationException", "not found")

    async def invocation(self, scope: Scope, receive: Receive, send: Send, path: str) -> bool:
        """Serve an invocation; return False if the request is S3's after all."""
        if self.timings is None:
            return await self._invocation(scope, receive, send, path)
        started = time.perf_counter_ns()
        try:
            return await self._invocation(scope, receive, send, path)
        finally:
            if self.timings is not None:
                self.timings.append(time.perf_counter_ns() - started)

    async def _invocation(self, scope: Scope, receive: Receive, send: Send, path: str) -> bool:
        target_model = content_type = accept = ""
        for key, value in scope["headers"]:
            if key == b"x-amzn-sagemaker-target-model":
                target_model = value.decode("utf-8")
            elif key == b"content-type":
                content_type = value.decode("latin-1")
            elif key == b"accept":
                accept = value.decode("latin-1")
            elif key == b"authorization" and b"/s3/aws4_request" in value:
                return False  # PUT/POST on bucket "endpoints": moto's
        name = path[len(_INVOCATIONS_PREFIX) : -len(_INVOCATIONS_SUFFIX)]
        body = await _read_body(receive)
        registered = self._endpoints.get(name)
        if registered is None:
            message = f"Endpoint {name} of account {self.account_id} not found."
            await self._runtime_error(send, 400, "ValidationError", message)
            return True
        endpoint = registered.endpoint
        try:
            result = None
            if registered.invoke_nowait is not None:
                result = registered.invoke_nowait(target_model, body, content_type, accept)
            elif registered.is_loaded is not None and registered.is_loaded(target_model):
                result = endpoint.invoke(target_model, body, content_type, accept)
            if result is None:
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(
                    self._invoke_pool,
                    partial(endpoint.invoke, target_model, body, content_type, accept),
                )
            status, headers, payload = _render(result)
        except Exception as error:
            logger.exception("endpoint %s failed", name)
            await self._runtime_error(send, 500, "InternalFailure", f"{type(error).__name__}")
            return True
        await _respond(send, status, headers, payload)
        return True

    @staticmethod
    async def _runtime_error(send: Send, status: int, code: str, message: str) -> None:
        # SageMaker Runtime is a REST-JSON service: botocore reads the code from the
        # x-amzn-ErrorType header and the message from the body.
        body = json.dumps({"ErrorCode": code, "Message": message}).encode()
        headers = [*_json_headers(body, b"application/json"), (b"x-amzn-errortype", code.encode())]
        await _respond(send, status, headers, body)


class MotoApp:
    """moto's services as an ASGI application, with the store that keeps them: what
    the local stack's DynamoDB process serves (:func:`build_dynamodb_app`), and what
    :class:`AwsApp` adds its routing to.

    Attributes
    ----------
    store
        Where the state is kept across restarts (None: it is not).
    restored
        What was restored when the app was built (None without a store).
    """

    def __init__(
        self,
        *,
        moto_app: WSGIApp,
        wsgi_workers: int = 16,
        store: StateStore | None = None,
        participants: Iterable[Any] = (),
    ) -> None:
        # participants: persistence.Participant, each given the store's append as its
        # ``journal``
        self.store = store
        self.restored: Restored | None = None
        if store is not None:
            # Restore before anything is served: moto's state and the participants'.
            for participant in participants:
                store.register(participant)
                participant.journal = store.append
            store.install()
            try:
                self.restored = store.restore(moto_app)
            except BaseException:
                store.close(snapshot=False)  # moto's backends as they were: unwrapped
                raise
        self._moto = WsgiOnThreads(_MotoEnviron(moto_app, store), workers=wsgi_workers)

    def checkpoint(self) -> None:
        """Snapshot the state now and then on the store's schedule (no-op without a store).

        The local stack calls it once started, so the snapshot holds its bucket, table,
        queues and rules, which only snapshots keep.
        """
        if self.store is not None:
            self.store.snapshot()
            self.store.start_schedule()

    def close(self) -> None:
        """Snapshot the state (with a store), stop the threads."""
        if self.store is not None:
            self.store.close()
        self._moto.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request with moto."""
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return
        await self._moto(scope, receive, send)


class AwsApp(MotoApp):
    """The front ASGI application (build it with :func:`build_aws_app`).

    Attributes
    ----------
    jobs
        The SageMaker job service.
    s3_events
        The ``Object Created`` emitter; :meth:`S3EventEmitter.enable` a bucket to
        get events for it.
    store, restored
        As :class:`MotoApp`'s.
    """

    def __init__(
        self,
        *,
        moto_app: WSGIApp,
        jobs: JobService,
        s3_events: S3EventEmitter,
        endpoints: Mapping[str, Endpoint] | None = None,
        account_id: str = DEFAULT_ACCOUNT_ID,
        wsgi_workers: int = 16,
        invoke_threads: int = 16,
        store: StateStore | None = None,
        dynamodb_url: str | None = None,
    ) -> None:
        self.jobs = jobs
        self.s3_events = s3_events
        self.account_id = account_id
        self._pending = _PendingEvents()
        # with a store: the jobs (restarted by attach()) and the events of acknowledged
        # writes never delivered are restored with moto's state
        super().__init__(
            moto_app=moto_app,
            wsgi_workers=wsgi_workers,
            store=store,
            participants=(jobs, self._pending),
        )
        for event_id, arguments in list(self._pending.pending.items()):
            self._emit_pending(event_id, arguments)
        self.invocations = InvocationsApp(account_id, invoke_threads)
        self._control_pool = ThreadPoolExecutor(4, thread_name_prefix="aws-control")
        self.dynamodb = None if dynamodb_url is None else Forwarder(dynamodb_url)
        self._forward_pool = (
            None
            if dynamodb_url is None
            else ThreadPoolExecutor(16, thread_name_prefix="aws-forward")
        )
        for name, endpoint in (endpoints or {}).items():
            self.register_endpoint(name, endpoint)

    # -- configuration

    def register_endpoint(self, name: str, endpoint: Endpoint) -> None:
        """Serve ``POST /endpoints/{name}/invocations`` with ``endpoint``."""
        self.invocations.register_endpoint(name, endpoint)

    def unregister_endpoint(self, name: str) -> None:
        """Stop serving endpoint ``name`` (it answers ValidationError again)."""
        self.invocations.unregister_endpoint(name)

    @property
    def endpoint_names(self) -> frozenset[str]:
        """The endpoints served."""
        return self.invocations.endpoint_names

    def attach(self, url: str) -> None:
        """Called once the server listens at ``url``: start the job workers."""
        self.jobs.start(url)

    def close(self) -> None:
        """Snapshot the state (with a store), stop the job workers and the thread pools.

        The snapshot comes first: jobs still running are kept as in progress and run
        again on the next start, as after a crash.
        """
        super().close()
        self.jobs.close()
        self.invocations.close()
        self._control_pool.shutdown(wait=False, cancel_futures=True)
        if self._forward_pool is not None:
            self._forward_pool.shutdown(wait=False, cancel_futures=True)

    # -- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route one request (see the module's documentation)."""
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                await _lifespan(receive, send)
            return
        method = scope["method"]
        path = scope["path"]
        if (
            method == "POST"
            and path.startswith(_INVOCATIONS_PREFIX)
            and path.endswith(_INVOCATIONS_SUFFIX)
            and await self.invocations.invocation(scope, receive, send, path)
        ):
            return
        target = None
        for name, value in scope["headers"]:
            if name == b"x-amz-target":
                target = value
                break
        if self.dynamodb is not None and target is not None and target.startswith(_DYNAMODB):
            await self._forward(self.dynamodb, scope, receive, send)
            return
        if target is not None and target.startswith(b"SageMaker."):
            operation = target[len(b"SageMaker.") :].decode("latin-1")
            if operation in OPERATIONS:
                await self._job_operation(operation, receive, send)
                return
            if operation == "ListTags":
                body = await _read_body(receive)
                if await self._job_tags(body, send):
                    return
                receive = _replay(body, receive)
        elif target is None and method in ("PUT", "POST") and self.s3_events.active:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            query = scope.get("query_string", b"").decode("latin-1")
            write = classify_s3_write(method, path, query, headers)
            if write is not None and self.s3_events.watches(write.bucket):
                await self._s3_write(scope, receive, send, write, headers)
                return
        await self._moto(scope, receive, send)

    def forwards(self, headers: Mapping[bytes, bytes]) -> bool:
        """Whether a request with these headers is served by another process."""
        return self.dynamodb is not None and headers.get(b"x-amz-target", b"").startswith(_DYNAMODB)

    async def _forward(self, to: Forwarder, scope: Scope, receive: Receive, send: Send) -> None:
        assert self._forward_pool is not None  # there is a Forwarder
        body = await _read_body(receive)
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
        query = scope.get("query_string", b"")
        target = (raw_path + (b"?" + query if query else b"")).decode("latin-1")
        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name.decode("latin-1") not in _HOP_BY_HOP
        }
        loop = asyncio.get_running_loop()
        try:
            status, answer, payload = await loop.run_in_executor(
                self._forward_pool, to.send, scope["method"], target, body, headers
            )
        except (OSError, http.client.HTTPException) as error:
            logger.warning("no answer from %s: %r", to.url, error)
            payload = json.dumps(
                {"__type": "ServiceUnavailable", "message": f"{to.url} did not answer"}
            ).encode()
            status, answer = 503, _json_headers(payload, b"application/x-amz-json-1.0")
        await _respond(send, status, answer, payload)

    # -- SageMaker jobs

    async def _job_operation(self, operation: str, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        status = 200
        try:
            request = json.loads(body or b"{}")
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError:
            answer: dict[str, Any] = {
                "__type": "SerializationException",
                "Message": "the request body is not a JSON object",
            }
            status = 400
        else:
            loop = asyncio.get_running_loop()
            try:
                answer = await loop.run_in_executor(
                    self._control_pool, handle, self.jobs, operation, request
                )
            except SageMakerError as error:
                status, answer = error.status, error.to_json()
            except Exception as error:
                logger.exception("SageMaker.%s failed", operation)
                status = 500
                answer = {"__type": "InternalFailure", "Message": f"{type(error).__name__}"}
        payload = json.dumps(answer).encode()
        await _respond(send, status, _json_headers(payload), payload)

    async def _job_tags(self, body: bytes, send: Send) -> bool:
        try:
            arn = json.loads(body or b"{}").get("ResourceArn", "")
        except (ValueError, AttributeError):
            return False
        if not isinstance(arn, str) or not self.jobs.owns(arn):
            return False
        payload = json.dumps(self.jobs.list_tags(arn)).encode()
        await _respond(send, 200, _json_headers(payload), payload)
        return True

    # -- S3 writes with events

    async def _s3_write(
        self, scope: Scope, receive: Receive, send: Send, write: Any, headers: Mapping[str, str]
    ) -> None:
        form: bytes | None = None
        if write.reason == POST_OBJECT:
            form = await _read_body(receive)
            receive = _replay(form, receive)
        answer: dict[str, Any] = {}
        content_type = headers.get("content-type", "")

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                response = {k.decode("latin-1"): v.decode("latin-1") for k, v in message["headers"]}
                # Read now, before the client has its answer (and can write the key
                # again), with a sequencer in the order moto answered the writes.
                observed = self.s3_events.observe(
                    write, response, request_body=form, request_content_type=content_type
                )
                if observed is not None:
                    client = scope.get("client") or ("127.0.0.1", 0)
                    answer["id"] = uuid.uuid4().hex
                    answer["arguments"] = {
                        "write": observed[0],
                        "response_headers": response,
                        "source_ip": client[0],
                        "stored": observed[1],
                        "sequencer": self.s3_events.sequencer.next(),
                        "time": datetime.now(UTC),
                    }
                    if self.store is not None:  # journaled before the client has its answer
                        await asyncio.get_running_loop().run_in_executor(
                            self._control_pool,
                            self._pending.add,
                            answer["id"],
                            answer["arguments"],
                        )
            await send(message)

        await self._moto(scope, receive, capture)
        if "arguments" not in answer:
            return
        emit = partial(self._emit_pending, answer["id"], answer["arguments"])
        await asyncio.get_running_loop().run_in_executor(self._control_pool, emit)

    def _emit_pending(self, event_id: str, arguments: dict[str, Any]) -> None:
        write = arguments["write"]
        try:
            self.s3_events.emit(
                write,
                arguments["response_headers"],
                source_ip=arguments["source_ip"],
                stored=arguments["stored"],
                sequencer=arguments["sequencer"],
                when=arguments.get("time"),
            )
        except Exception:  # the write succeeded; a lost event is logged, not raised
            logger.exception("could not emit the Object Created event of %s", write)
            return
        if self.store is not None:
            self._pending.sent(event_id)


def _moto_dispatcher() -> WSGIApp:
    """moto's WSGI application, remembering which backend serves a host."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    class Dispatcher(DomainDispatcherApplication):
        """moto's dispatcher, remembering which backend serves a host: moto finds it
        anew per request by listing its package directory and trying every service's
        URL patterns, a fixed answer that cost ~5% of the process's CPU."""

        def __init__(self, create_app: Any) -> None:
            super().__init__(create_app)
            self.backends: dict[str | None, Any] = {}

        def get_backend_for_host(self, host: str | None) -> Any:
            try:
                return self.backends[host]
            except KeyError:
                backend = self.backends[host] = super().get_backend_for_host(host)
                return backend

    return Dispatcher(create_backend_app)


def build_dynamodb_app(
    *,
    account_id: str = DEFAULT_ACCOUNT_ID,
    region: str = DEFAULT_REGION,
    wsgi_workers: int = 16,
    state_dir: Path | None = None,
    adopt_from: Path | None = None,
    snapshot_interval: float = 600.0,
) -> MotoApp:
    """Build the application of the local stack's DynamoDB process.

    Parameters
    ----------
    account_id, region, wsgi_workers, snapshot_interval
        As for :func:`build_aws_app`.
    state_dir
        Keep DynamoDB's state in this directory (None: in memory only).
    adopt_from
        The directory a stack that served DynamoDB in its aws process kept it in:
        restored from there while ``state_dir`` holds nothing
        (:class:`~.persistence.StateStore`).
    """
    from citymodels_devkit.local import dynamodb, hotpaths

    dynamodb.install()
    hotpaths.install()
    store = None
    if state_dir is not None:
        store = StateStore(
            state_dir,
            account_id=account_id,
            region=region,
            snapshot_interval=snapshot_interval,
            services=("dynamodb",),
            adopt_from=adopt_from,
        )
    return MotoApp(moto_app=_moto_dispatcher(), wsgi_workers=wsgi_workers, store=store)


def build_aws_app(
    *,
    endpoints: Mapping[str, Endpoint] | None = None,
    event_buckets: Iterable[str] = (),
    jobs: JobService | None = None,
    events: EventBus | None = None,
    max_job_workers: int = 2,
    max_active_jobs: int | None = None,
    account_id: str = DEFAULT_ACCOUNT_ID,
    region: str = DEFAULT_REGION,
    wsgi_workers: int = 16,
    invoke_threads: int = 16,
    state_dir: Path | None = None,
    fresh: bool = False,
    snapshot_interval: float = 600.0,
    dynamodb_url: str | None = None,
) -> AwsApp:
    """Build the local stack's AWS endpoint application.

    Parameters
    ----------
    endpoints
        Endpoint name → object serving its invocations (more with
        :meth:`AwsApp.register_endpoint`).
    event_buckets
        Buckets whose object writes produce ``Object Created`` events (EventBridge
        notifications on); more with ``app.s3_events.enable(bucket)``.
    jobs
        The SageMaker job service; by default one with ``max_job_workers`` workers
        and ``max_active_jobs``, sending its events to ``events``.
    events
        The event bus (moto's default bus, in-process, by default).
    account_id, region
        The account and region the stack pretends to be (moto's default account).
    wsgi_workers
        Threads serving moto.
    invoke_threads
        Threads for invocations that may block (cold models).
    state_dir
        Keep the state (moto's S3, DynamoDB, SQS and EventBridge, the jobs, undelivered
        S3 events) in this directory across restarts, and restore what is there now
        (:class:`~.persistence.StateStore`). None: the state lives in memory only.
    fresh
        Delete what ``state_dir`` holds first.
    snapshot_interval
        Seconds between scheduled snapshots (once :meth:`AwsApp.checkpoint` is called).
    dynamodb_url
        DynamoDB is served there (:func:`build_dynamodb_app`, in another process):
        its requests are forwarded, and its state is not kept here. None: moto's
        DynamoDB in this process.

    Returns
    -------
    AwsApp
        The ASGI application; serve it with :class:`LocalAwsServer`.
    """
    from citymodels_devkit.local import dynamodb, hotpaths

    dynamodb.install()  # transactions that cost the items they write, not the whole table
    hotpaths.install()  # parsing and listing that cost per run, not per request
    bus = events if events is not None else MotoEventBus(account_id, region)
    if jobs is None:
        jobs = JobService(
            events=bus,
            max_workers=max_job_workers,
            max_active_jobs=max_active_jobs,
            account_id=account_id,
            region=region,
        )
    emitter = S3EventEmitter(bus, event_buckets, account_id=account_id, region=region)
    store = None
    if state_dir is not None:
        if fresh:
            StateStore.wipe(state_dir)
        store = StateStore(
            state_dir,
            account_id=account_id,
            region=region,
            snapshot_interval=snapshot_interval,
            services=tuple(
                s for s in PERSISTED_SERVICES if s != "dynamodb" or dynamodb_url is None
            ),
        )
    return AwsApp(
        moto_app=_moto_dispatcher(),
        jobs=jobs,
        s3_events=emitter,
        endpoints=endpoints,
        account_id=account_id,
        wsgi_workers=wsgi_workers,
        invoke_threads=invoke_threads,
        store=store,
        dynamodb_url=dynamodb_url,
    )


class LocalAwsServer:
    """Serves an ASGI app with uvicorn (httptools, asyncio) in a background thread.

    Parameters
    ----------
    app
        The application (an :class:`AwsApp` is told its URL once listening, and
        closed on :meth:`stop`).
    host, port
        Where to listen; port 0 picks a free port (see :attr:`port`).
    startup_timeout
        Seconds to wait for the server to accept connections.

    Examples
    --------
    >>> with LocalAwsServer(build_aws_app(), port=0) as server:  # doctest: +SKIP
    ...     boto3.client("s3", endpoint_url=server.url).list_buckets()
    """

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        startup_timeout: float = 15.0,
    ) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self.startup_timeout = startup_timeout
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on (the ephemeral one if 0 was asked for)."""
        if self._port is None:
            raise RuntimeError("the server is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port``: what ``endpoint_url`` / ``AWS_ENDPOINT_URL`` take."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> LocalAwsServer:
        """Start serving; return when the port accepts connections.

        Raises
        ------
        OSError
            The port cannot be bound.
        RuntimeError
            The server did not come up within ``startup_timeout``.
        """
        import uvicorn

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections
        # only for sockets that say so, and without it Nagle's algorithm holds a
        # response body written after its headers for the client's delayed ACK (~40 ms).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._requested_port))
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self._port,
            loop="asyncio",
            http="httptools",
            lifespan="off",
            access_log=False,
            log_config=None,
            log_level="warning",
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name=f"local-aws-{self._port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the local AWS endpoint did not start on {self.url}")
            time.sleep(0.01)
        with socket.create_connection((self.host, self._port), timeout=self.startup_timeout):
            pass
        if isinstance(self.app, AwsApp):
            self.app.attach(self.url)
        return self

    def stop(self) -> None:
        """Stop serving (open connections get a few seconds) and close an :class:`AwsApp`
        (an :class:`AwsApp` too)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None
        if isinstance(self.app, MotoApp):
            self.app.close()

    def __enter__(self) -> LocalAwsServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
