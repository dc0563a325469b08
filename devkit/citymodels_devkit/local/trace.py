"""Tracing the requests the local AWS endpoint serves: diagnostics, off by default.

:class:`RequestTrace` counts and times every request the aws process's
:class:`~.aws.AwsApp` and the DynamoDB process's :class:`~.aws.MotoApp` serve, by
operation and by caller (told apart by the User-Agent), both as the server sees it
and inside moto. It is switched on and read through each process's commands
(``LocalStack.request_trace``, which merges the two reports: :func:`merge_reports`);
until then nothing of it runs. While on it wraps ``AwsApp.__call__``,
``MotoApp.__call__`` and ``_MotoEnviron.__call__`` (in its process alone, which holds
one app) and puts the originals back when switched off. A request the aws process
forwards to the DynamoDB process is counted there only.

Callers:

- ``application``: any client not named below (the functions: these calls happen on AWS);
- ``platform``: what SageMaker itself does on AWS, done here by the local stack: the job
  workers' S3 staging (``JOBS_AGENT``) and the endpoint's model loads (S3 calls with
  ``LOCAL_STACK_AGENT``);
- ``local``: the local stack's own plumbing, with no counterpart on AWS (its other calls
  with ``LOCAL_STACK_AGENT``: the SQS queues standing for EventBridge targets, the
  endpoint's metrics);
- a name of the caller's choosing for User-Agents it sets apart (``apart``: a benchmark's
  own calls); their operations are named ``"{caller}: {operation}"``.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

SCOPE_KEY = "_cm_trace_moto_s"
"""Where the moto wrapper leaves its time for the request's ASGI scope."""
OWN_KEY = "_cm_trace_moto_own_s"
"""Where moto's own application leaves its time (without the DynamoDB lock's wait)."""


class _TimedMoto:
    """moto's WSGI application, timed: its own work, without waiting for the lock that
    serialises DynamoDB calls (``_MotoEnviron``) or the journal."""

    def __init__(self, app: Any) -> None:
        self.inner = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.inner(environ, start_response)
        finally:
            scope = environ.get("asgi.scope")
            if scope is not None:
                scope[OWN_KEY] = time.perf_counter() - started


class RequestTrace:
    """Counts and times every request of the aws process's AWS endpoint.

    For each operation: ``server`` time, from the request's arrival at the ASGI app to
    its last response byte; for requests moto serves, ``moto`` time, inside the WSGI
    application (on a :class:`~.aws.WsgiOnThreads` thread): the difference is waiting for a WSGI
    thread and the ASGI/WSGI hand-offs; and ``moto_own``, inside moto's application
    itself: for DynamoDB, ``moto`` minus ``moto_own`` is the wait for the lock that
    serialises its calls (and the journal, when the state is kept).

    Parameters
    ----------
    apart
        User-Agent substring → caller name, for callers counted apart (checked first).
    """

    def __init__(self, apart: Mapping[str, str] | None = None) -> None:
        self.apart = {k.encode("latin-1"): v for k, v in (apart or {}).items()}
        self._lock = threading.Lock()
        self._samples: dict[str, list[tuple[float, float | None, float | None]]] = defaultdict(list)
        self._callers: dict[tuple[str, str], list[float]] = defaultdict(list)
        self._since = time.perf_counter()
        self._originals: tuple[Any, ...] | None = None
        self._timed: list[Any] = []  # the _MotoEnviron instances whose app is wrapped

    # -- switching on and off

    @property
    def installed(self) -> bool:
        """Whether requests are being traced."""
        return self._originals is not None

    def install(self) -> None:
        """Start tracing every request of every :class:`~.aws.AwsApp` of this process."""
        from citymodels_devkit.local import aws

        if self._originals is not None:
            return
        originals = (aws.AwsApp.__call__, aws.MotoApp.__call__)
        original_moto = aws._MotoEnviron.__call__
        self._originals = (*originals, original_moto)

        def timed_moto(app: Any, environ: dict[str, Any], start_response: Any) -> Any:
            if not isinstance(app.app, _TimedMoto):
                with self._lock:
                    if not isinstance(app.app, _TimedMoto):
                        app.app = _TimedMoto(app.app)
                        self._timed.append(app)
            started = time.perf_counter()
            try:
                return original_moto(app, environ, start_response)
            finally:
                scope = environ.get("asgi.scope")
                if scope is not None:
                    scope[SCOPE_KEY] = time.perf_counter() - started

        def tracing(original: Any) -> Any:
            async def traced(app: Any, scope: Any, receive: Any, send: Any) -> None:
                await self._traced(original, app, scope, receive, send)

            return traced

        aws.AwsApp.__call__, aws.MotoApp.__call__ = map(tracing, originals)  # type: ignore[method-assign]
        aws._MotoEnviron.__call__ = timed_moto  # type: ignore[method-assign,assignment]

    async def _traced(self, original: Any, app: Any, scope: Any, receive: Any, send: Any) -> None:
        from citymodels_devkit.local import aws

        if scope.get("type") != "http":
            await original(app, scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        forwards = getattr(app, "forwards", None)
        if forwards is not None and forwards(headers):  # counted where it is served
            await original(app, scope, receive, send)
            return
        name = operation(scope, headers)
        if b"x-www-form-urlencoded" in headers.get(b"content-type", b""):
            body = await aws._read_body(receive)  # query protocol: Action in the body
            fields = body.decode("latin-1").split("&")
            action = next((f[7:] for f in fields if f.startswith("Action=")), "?")
            name = f"{action} (query)"
            receive = aws._replay(body, receive)
        who = self.caller(name, headers.get(b"user-agent", b""))
        if who in self.apart.values():
            name = f"{who}: {name}"
        started = time.perf_counter()
        recorded = False

        def record() -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                elapsed = time.perf_counter() - started
                with self._lock:
                    self._samples[name].append((elapsed, scope.get(SCOPE_KEY), scope.get(OWN_KEY)))
                    self._callers[(who, name)].append(elapsed)

        length: list[int] = []  # Content-Length, then the body bytes still to send

        async def timed_send(message: Any) -> None:
            # Counted as the last byte goes out, before the client can have it all
            # (a streaming bridge sends the body, then an empty last message).
            kind = message.get("type")
            if kind == "http.response.start":
                for key, value in message.get("headers") or ():
                    if key.lower() == b"content-length":
                        length.append(int(value))
            elif kind == "http.response.body":
                if length:
                    length[0] -= len(message.get("body", b""))
                if not message.get("more_body") or (length and length[0] <= 0):
                    record()
            await send(message)

        try:
            await original(app, scope, receive, timed_send)
        finally:
            record()  # no complete answer (an error, a disconnect): counted still

    def uninstall(self) -> None:
        """Stop tracing: the app's own methods again."""
        from citymodels_devkit.local import aws

        if self._originals is None:
            return
        originals: Any = self._originals
        aws.AwsApp.__call__, aws.MotoApp.__call__, aws._MotoEnviron.__call__ = originals  # type: ignore[method-assign]
        self._originals = None
        with self._lock:
            for environ_app in self._timed:
                if isinstance(environ_app.app, _TimedMoto):
                    environ_app.app = environ_app.app.inner
            self._timed.clear()

    def reset(self) -> None:
        """Forget what was counted; the window starts now."""
        with self._lock:
            self._samples.clear()
            self._callers.clear()
            self._since = time.perf_counter()

    # -- classifying

    def caller(self, name: str, user_agent: bytes) -> str:
        """Who made a request (see the module's documentation)."""
        from citymodels_devkit.local.processes import LOCAL_STACK_AGENT
        from citymodels_devkit.local.sagemaker.runner import JOBS_AGENT

        for marker, who in self.apart.items():
            if marker in user_agent:
                return who
        if JOBS_AGENT.encode() in user_agent:
            return "platform"  # SageMaker's job staging
        if LOCAL_STACK_AGENT.encode() in user_agent:
            return "platform" if name.startswith("S3 ") else "local"  # model loads: SageMaker's
        return "application"

    # -- reading

    def report(self) -> dict[str, Any]:
        """What was counted since the last :meth:`reset` (or the start).

        Returns
        -------
        dict
            ``window_s``; ``operations``: per operation ``count``, ``server_s_total``,
            ``server_ms_p50``, ``mean_in_flight`` (server time over the window) and, for
            moto's, ``moto_s_total``, ``moto_ms_p50``, ``moto_own_s_total`` and
            ``moto_own_ms_p50``, by server time, most first;
            ``callers``: per caller, ``count``, ``server_s_total`` and ``operations``
            (operation → count).
        """
        with self._lock:
            items = {k: list(v) for k, v in self._samples.items()}
            callers = {k: list(v) for k, v in self._callers.items()}
            window = time.perf_counter() - self._since
        rows: dict[str, Any] = {}
        for name, values in items.items():
            server = [v[0] for v in values]
            moto = [v[1] for v in values if v[1] is not None]
            own = [v[2] for v in values if v[2] is not None]
            rows[name] = {
                "count": len(values),
                "server_s_total": sum(server),
                "server_ms_p50": statistics.median(server) * 1e3,
                "mean_in_flight": sum(server) / window if window > 0 else None,
            }
            if moto:
                rows[name]["moto_ms_p50"] = statistics.median(moto) * 1e3
                rows[name]["moto_s_total"] = sum(moto)
            if own:
                rows[name]["moto_own_ms_p50"] = statistics.median(own) * 1e3
                rows[name]["moto_own_s_total"] = sum(own)
        by_caller: dict[str, Any] = {}
        for (who, name), times in sorted(callers.items()):
            entry = by_caller.setdefault(who, {"count": 0, "server_s_total": 0.0, "operations": {}})
            entry["count"] += len(times)
            entry["server_s_total"] += sum(times)
            entry["operations"][name] = len(times)
        return {
            "window_s": window,
            "operations": dict(sorted(rows.items(), key=lambda kv: -kv[1]["server_s_total"])),
            "callers": by_caller,
        }


def operation(scope: Mapping[str, Any], headers: Mapping[bytes, bytes]) -> str:
    """A request's operation: ``Action (service)`` for JSON protocols, ``InvokeEndpoint``,
    or ``S3 METHOD object|bucket[?subresource]``."""
    target = headers.get(b"x-amz-target")
    if target is not None:
        service, _, action = target.decode("latin-1").rpartition(".")
        return f"{action} ({service.split('_')[0]})"
    path: str = scope.get("path", "")
    if path.startswith("/endpoints/") and path.endswith("/invocations"):
        return "InvokeEndpoint"
    parts = [p for p in path.split("/") if p]
    s3_kind = "object" if len(parts) >= 2 else "bucket"
    query = scope.get("query_string", b"").decode("latin-1")
    suffix = "?" + query.split("=")[0].split("&")[0] if query else ""
    return f"S3 {scope.get('method')} {s3_kind}{suffix}"


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report of several processes' (:meth:`RequestTrace.report`): each serves
    its own operations (a forwarded request is counted where it is served); an
    operation two of them served is summed, its medians the busier one's."""
    operations: dict[str, dict[str, Any]] = {}
    callers: dict[str, dict[str, Any]] = {}
    for report in reports:
        for name, row in report["operations"].items():
            kept = operations.get(name)
            if kept is None:
                operations[name] = dict(row)
                continue
            busier = row if row["count"] > kept["count"] else kept
            merged = {**busier}
            for key in row.keys() & kept.keys():
                if key.endswith("_total") or key in ("count", "mean_in_flight"):
                    merged[key] = (row[key] or 0) + (kept[key] or 0)
            operations[name] = merged
        for who, entry in report["callers"].items():
            into = callers.setdefault(who, {"count": 0, "server_s_total": 0.0, "operations": {}})
            into["count"] += entry["count"]
            into["server_s_total"] += entry["server_s_total"]
            for name, count in entry["operations"].items():
                into["operations"][name] = into["operations"].get(name, 0) + count
    return {
        "window_s": max((r["window_s"] for r in reports), default=0.0),
        "operations": dict(sorted(operations.items(), key=lambda kv: -kv[1]["server_s_total"])),
        "callers": callers,
    }


class TraceControl:
    """The aws process's trace, driven by its commands (:mod:`.processes`).

    ``start(apart)`` installs a fresh trace; ``take(stop)`` returns its report and, with
    ``stop``, uninstalls it. Nothing is installed before the first ``start``.
    """

    def __init__(self) -> None:
        self.trace: RequestTrace | None = None

    def start(self, apart: Mapping[str, str] | None = None) -> None:
        if self.trace is not None:
            self.trace.uninstall()
        self.trace = RequestTrace(apart)
        self.trace.install()

    def take(self, stop: bool = True) -> dict[str, Any] | None:
        if self.trace is None:
            return None
        report = self.trace.report()
        if stop:
            self.trace.uninstall()
            self.trace = None
        return report


CONTROL = TraceControl()
"""This process's trace (what it patches is process-wide, so there is one)."""

__all__ = [
    "CONTROL",
    "OWN_KEY",
    "SCOPE_KEY",
    "RequestTrace",
    "TraceControl",
    "merge_reports",
    "operation",
]
