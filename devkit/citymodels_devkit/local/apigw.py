"""The local API Gateway: the template's REST API routes, its Lambda REQUEST
authorizer applied with API Gateway's caching, and proxy events to the handler.

- Routes (method + path with ``{param}`` segments) come from the functions' ``Api``
  events in the template; anything else is 403 ``Missing Authentication Token``, as
  API Gateway answers an unknown route.
- The authorizer is invoked with a REQUEST event. Its result is cached by identity
  source (the ``Authorization`` header) for the template's ``ReauthorizeEvery``
  seconds, and the cached policy is evaluated against each request's method ARN —
  exactly API Gateway's behaviour, which is why our authorizer returns a policy valid
  for every path a key may use. A missing identity source is 401 without calling the
  authorizer; an ``Unauthorized`` error is 401; a policy that does not allow the
  method ARN is 403.
- The handler gets an API Gateway REST proxy event (v1), with the authorizer's context
  in ``requestContext.authorizer``, and its response dict becomes the HTTP response.
- What API Gateway answers itself (401, 403, an unknown route, a failing authorizer or
  integration) is rendered from the template's gateway responses (``GatewayResponses``
  or ``AWS::ApiGateway::GatewayResponse``: status, headers, body template, with the
  ``DEFAULT_4XX`` / ``DEFAULT_5XX`` fallbacks), as API Gateway renders them; without
  one, API Gateway's default ``{"message": ...}``.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import json
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from citymodels_devkit.local.lambdas import FunctionHost
from citymodels_devkit.local.template import (
    ACCOUNT_ID,
    REGION,
    GatewayResponse,
    ResolvedTemplate,
    Route,
)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]

API_ID = "local"

RESPONSE_TYPES = {
    401: "UNAUTHORIZED",
    403: "ACCESS_DENIED",
    500: "AUTHORIZER_CONFIGURATION_ERROR",
}
"""The gateway response type of each authorizer outcome."""


def render_gateway_response(
    responses: Mapping[str, GatewayResponse],
    response_type: str,
    status: int,
    message: str,
    request_id: str = "",
) -> Answer:
    """Return API Gateway's own answer of ``response_type``: the template's gateway
    response for that type, else its ``DEFAULT_4XX``/``DEFAULT_5XX``, else API Gateway's
    default body ``{"message": ...}``.

    Body templates may use ``$context.error.message``, ``$context.error.messageString``
    (the message as a quoted JSON string), ``$context.error.responseType`` and
    ``$context.requestId``.
    """
    spec = responses.get(response_type) or responses.get(
        "DEFAULT_5XX" if status >= 500 else "DEFAULT_4XX"
    )
    headers = [(b"content-type", b"application/json")]
    if request_id:
        headers.append((b"x-amzn-requestid", request_id.encode()))
    if spec is None or not spec.templates:
        body = json.dumps({"message": message})
        code = spec.status if spec is not None and spec.status else status
    else:
        content_type = "application/json" if "application/json" in spec.templates else ""
        content_type = content_type or next(iter(spec.templates))
        headers[0] = (b"content-type", content_type.encode())
        values = {
            "context.error.messageString": json.dumps(message),
            "context.error.message": message,
            "context.error.responseType": response_type,
            "context.requestId": request_id,
        }
        body = re.sub(
            r"\$\{?(context(?:\.[A-Za-z]+)+)\}?",
            lambda m: values.get(m.group(1), m.group(0)),
            spec.templates[content_type],
        )
        code = spec.status or status
    if spec is not None:
        headers += [(k.lower().encode(), v.encode()) for k, v in spec.headers.items()]
    return code, headers, body.encode()


@dataclass(frozen=True)
class _CompiledRoute:
    route: Route
    pattern: re.Pattern[str]
    names: tuple[str, ...]


def _compile(route: Route) -> _CompiledRoute:
    names: list[str] = []
    regex = "^"
    for part in route.path.strip("/").split("/"):
        regex += "/"
        match = re.fullmatch(r"\{([^}+]+)(\+?)\}", part)
        if match:
            names.append(match.group(1))
            regex += "(.+)" if match.group(2) else "([^/]+)"
        else:
            regex += re.escape(part)
    return _CompiledRoute(route, re.compile(regex + "$"), tuple(names))


def _arn_matches(pattern: str, arn: str) -> bool:
    # IAM resource wildcards: '*' any characters (including '/'), '?' one character.
    return fnmatch.fnmatchcase(arn, pattern.replace("[", "[[]"))


def policy_allows(policy: dict[str, Any], method_arn: str) -> bool:
    """Evaluate an authorizer's IAM policy for ``execute-api:Invoke`` on ``method_arn``."""
    allowed = False
    statements = policy.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    for statement in statements:
        actions = statement.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        if not any(a in ("execute-api:Invoke", "execute-api:*", "*") for a in actions):
            continue
        resources = statement.get("Resource", [])
        resources = [resources] if isinstance(resources, str) else resources
        if any(_arn_matches(r, method_arn) for r in resources):
            if statement.get("Effect") == "Deny":
                return False
            if statement.get("Effect") == "Allow":
                allowed = True
    return allowed


class ApiGateway:
    """The ASGI application of the local REST API.

    Parameters
    ----------
    stack
        The resolved template (routes, authorizers, stage).
    host
        Runs the handlers.
    """

    def __init__(
        self,
        stack: ResolvedTemplate,
        host: FunctionHost,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stack = stack
        self.host = host
        self.stage = stack.api_stage
        self.clock = clock
        self.routes = [_compile(r) for r in stack.routes]
        self._cache: dict[tuple[str, tuple[str, ...]], tuple[float, dict[str, Any]]] = {}
        self._cache_lock = threading.Lock()
        self.authorizer_calls = 0

    # -- routing ---------------------------------------------------------------------

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        """Return the route and path parameters for a request, or None."""
        for compiled in self.routes:
            if compiled.route.method not in (method, "ANY"):
                continue
            found = compiled.pattern.match(path)
            if found:
                return compiled.route, {
                    name: unquote(value)
                    for name, value in zip(compiled.names, found.groups(), strict=True)
                }
        return None

    def method_arn(self, method: str, path: str) -> str:
        """Return the execute-api ARN API Gateway gives the authorizer for this request."""
        return f"arn:aws:execute-api:{REGION}:{ACCOUNT_ID}:{API_ID}/{self.stage}/{method}{path}"

    # -- authorizer ------------------------------------------------------------------

    def _cache_key(self, route: Route, headers: dict[str, str]) -> tuple[str, tuple[str, ...]]:
        spec = self.stack.authorizers[str(route.authorizer)]
        return str(route.authorizer), tuple(
            headers.get(h.lower(), "") for h in spec.identity_headers
        )

    def _cached(self, route: Route, headers: dict[str, str]) -> bool:
        """Whether the route's authorizer result for these headers is cached and fresh."""
        cached = self._cache.get(self._cache_key(route, headers))
        return cached is not None and cached[0] > self.clock()

    def authorize(
        self,
        route: Route,
        method: str,
        path: str,
        headers: dict[str, str],
        event_base: dict[str, Any],
    ) -> tuple[int, dict[str, Any] | None, str]:
        """Apply the route's authorizer; return (status, authorizer context, message)."""
        if route.authorizer is None:
            return 200, None, ""
        spec = self.stack.authorizers[route.authorizer]
        key = self._cache_key(route, headers)
        if not all(key[1]):
            return 401, None, "Unauthorized"
        method_arn = self.method_arn(method, path)
        now = self.clock()
        with self._cache_lock:
            cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            result = cached[1]
        else:
            event = {
                "type": "REQUEST",
                "methodArn": method_arn,
                **event_base,
            }
            self.authorizer_calls += 1
            try:
                result = self.host.invoke(spec.function, event)
            except Exception as err:
                if str(err) == "Unauthorized":
                    return 401, None, "Unauthorized"
                return 500, None, "AuthorizerConfigurationException"
            if not isinstance(result, dict) or "policyDocument" not in result:
                return 500, None, "AuthorizerConfigurationException"
            if spec.ttl_seconds > 0:
                with self._cache_lock:
                    self._cache[key] = (now + spec.ttl_seconds, result)
        if not policy_allows(result["policyDocument"], method_arn):
            return 403, None, "User is not authorized to access this resource"
        context = {"principalId": result.get("principalId", ""), **(result.get("context") or {})}
        return 200, context, ""

    # -- ASGI ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status, headers, payload = await self.handle(scope, body)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def handle(
        self, scope: Scope, body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Handle one request; return status, headers and body."""
        method = scope["method"]
        raw_path = scope["path"]
        # Requests may name the stage (/v1/cities) as on AWS, or not (/cities).
        path = (
            raw_path[len(self.stage) + 1 :] if raw_path.startswith(f"/{self.stage}/") else raw_path
        )
        headers: dict[str, str] = {}
        multi: dict[str, list[str]] = {}
        for name, value in scope.get("headers", []):
            key, text = name.decode("latin-1"), value.decode("latin-1")
            headers[key.lower()] = text
            multi.setdefault(key.lower(), []).append(text)
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        matched = self.match(method, path)
        if matched is None:
            return self._gateway(
                "MISSING_AUTHENTICATION_TOKEN", 403, "Missing Authentication Token", ""
            )
        route, params = matched
        request_id = str(uuid.uuid4())
        source_ip = (scope.get("client") or ("127.0.0.1", 0))[0]
        event_base = {
            "resource": route.path,
            "path": path,
            "httpMethod": method,
            "headers": headers,
            "multiValueHeaders": multi,
            "queryStringParameters": dict(query) or None,
            "multiValueQueryStringParameters": _multi(query) or None,
            "pathParameters": params or None,
            "stageVariables": None,
            "requestContext": {
                "resourceId": "local",
                "resourcePath": route.path,
                "httpMethod": method,
                "path": f"/{self.stage}{path}",
                "accountId": ACCOUNT_ID,
                "apiId": API_ID,
                "stage": self.stage,
                "requestId": request_id,
                "requestTimeEpoch": int(time.time() * 1000),
                "identity": {"sourceIp": source_ip, "userAgent": headers.get("user-agent", "")},
                "protocol": "HTTP/1.1",
            },
        }
        if route.authorizer is None or self._cached(route, headers):
            # no authorizer call to make: evaluate here, without a thread hand-off
            status, context, message = self.authorize(route, method, path, headers, event_base)
        else:
            status, context, message = await asyncio.to_thread(
                self.authorize, route, method, path, headers, event_base
            )
        if status != 200:
            return self._gateway(RESPONSE_TYPES.get(status, ""), status, message, request_id)
        is_text = not body or _is_text(headers.get("content-type", ""))
        event = {
            **event_base,
            "body": (
                body.decode("utf-8", errors="replace")
                if is_text
                else base64.b64encode(body).decode()
            )
            if body
            else None,
            "isBase64Encoded": bool(body) and not is_text,
        }
        if context is not None:
            event["requestContext"] = {**event_base["requestContext"], "authorizer": context}
        try:
            result = await asyncio.to_thread(self.host.invoke, route.function, event)
        except Exception:
            return self._gateway("DEFAULT_5XX", 502, "Internal server error", request_id)
        if not isinstance(result, dict) or "statusCode" not in result:
            return self._gateway("DEFAULT_5XX", 502, "Internal server error", request_id)
        return _response(result, request_id)

    def _gateway(self, response_type: str, status: int, message: str, request_id: str) -> Answer:
        return render_gateway_response(
            self.stack.gateway_responses, response_type, status, message, request_id
        )


def _multi(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in pairs:
        out.setdefault(key, []).append(value)
    return out


def _is_text(content_type: str) -> bool:
    kind = content_type.split(";")[0].strip().lower()
    return (
        not kind
        or kind.startswith("text/")
        or kind.endswith(("json", "xml", "csv"))
        or "form" in kind
    )


def _response(result: dict[str, Any], request_id: str) -> Answer:
    headers = [
        (k.lower().encode(), str(v).encode()) for k, v in (result.get("headers") or {}).items()
    ]
    for name, values in (result.get("multiValueHeaders") or {}).items():
        headers += [(name.lower().encode(), str(v).encode()) for v in values]
    headers.append((b"x-amzn-requestid", request_id.encode()))
    body = result.get("body") or ""
    payload = base64.b64decode(body) if result.get("isBase64Encoded") else str(body).encode("utf-8")
    return int(result["statusCode"]), headers, payload
