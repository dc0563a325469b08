"""The client of citymodels' own HTTP API (the ``ApiUrl`` output, docs/design.md §3).

The one way the devkit and the tests call the API: ``citymodels predict``
(:func:`citymodels_devkit.operations.predict`), the demo, and the integration tests.
One keep-alive connection per client (httpx), a Bearer key per call, the answer's
status, parsed body and round-trip time.

:meth:`ApiClient.call` returns whatever the API answered, errors included, for callers
that look at the status themselves; :meth:`ApiClient.json` raises
:class:`ApiCallFailed` with a message meant for a person when the answer is not a
success.
"""

from __future__ import annotations

import json
import time
from http import HTTPStatus
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

from citymodels.errors import CityModelsError

if TYPE_CHECKING:
    import httpx

JSON = "application/json"


class ApiCallFailed(CityModelsError):
    """The HTTP API answered with an error, or could not be reached.

    Attributes
    ----------
    status
        The HTTP status (0 when the API could not be reached).
    """

    code = "api_error"

    def __init__(self, message: str, *, status: int, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.status = status


class Answer(NamedTuple):
    """What the API answered.

    Attributes
    ----------
    status
        The HTTP status.
    body
        The body parsed as JSON (None when empty), or its text when it is not JSON.
    milliseconds
        Round-trip time of the request.
    """

    status: int
    body: Any
    milliseconds: float


class ApiClient:
    """Calls the HTTP API at ``api_url`` (ending in the stage, ``/v1/``).

    Parameters
    ----------
    api_url
        The stack's ``ApiUrl``.
    api_key
        The key sent with every call that names none; ``""`` sends no key.
    timeout
        Seconds to wait for each answer.
    user_agent
        The ``User-Agent`` header, or None for httpx's own.
    """

    def __init__(
        self,
        api_url: str,
        api_key: str = "",
        *,
        timeout: float = 30.0,
        user_agent: str | None = None,
    ) -> None:
        import httpx

        self.api_url = api_url.rstrip("/") + "/"
        self.api_key = api_key
        self.timeout = timeout
        headers = {"User-Agent": user_agent} if user_agent else {}
        self._client = httpx.Client(base_url=self.api_url, timeout=timeout, headers=headers)

    def url(self, path: str) -> str:
        """Return the full URL of ``path`` (relative to the stage)."""
        return self.api_url + path.lstrip("/")

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        content_type: str = JSON,
    ) -> Answer:
        """Call the API; return its answer whatever the status.

        Parameters
        ----------
        body
            Sent as JSON, or as is when it is ``bytes``.
        key
            The key for this call (default: the client's); ``""`` sends none.

        Raises
        ------
        ApiCallFailed
            The API could not be reached or did not answer in time (status 0).
        """
        import httpx

        url = self.url(path)
        content = None
        if body is not None:
            content = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": content_type, "Accept": JSON}
        secret = self.api_key if key is None else key
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        started = time.perf_counter()
        try:
            response = self._client.request(
                method, path.lstrip("/"), content=content, headers=headers
            )
        except httpx.TimeoutException as err:
            raise ApiCallFailed(
                f"the API did not answer within {self.timeout:g} s ({url})", status=0
            ) from err
        except httpx.TransportError as err:
            raise ApiCallFailed(f"cannot reach the API at {url}: {_reason(err)}", status=0) from err
        milliseconds = (time.perf_counter() - started) * 1000
        return Answer(response.status_code, _parsed(response), milliseconds)

    def json(
        self, method: str, path: str, body: Any = None, *, key: str | None = None
    ) -> tuple[Any, float]:
        """Call the API; return its JSON answer and the round-trip milliseconds.

        Raises
        ------
        ApiCallFailed
            The API answered with an error (its message is kept, with a hint for 401
            and 403), answered something other than JSON, or could not be reached.
        """
        answer = self.call(method, path, body, key=key)
        if answer.status >= 400:
            raise _refusal(answer)
        if isinstance(answer.body, str):
            raise ApiCallFailed(
                f"the API's answer is not JSON ({self.url(path)})", status=answer.status
            )
        return answer.body, answer.milliseconds

    def close(self) -> None:
        """Close the connection."""
        self._client.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _parsed(response: httpx.Response) -> Any:
    raw = response.content
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return raw.decode("utf-8", "replace")


def _reason(err: BaseException) -> str:
    """The operating system's reason (``Connection refused``) behind a transport error."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    return str(err)


def _refusal(answer: Answer) -> ApiCallFailed:
    """The error for an answer with an error status."""
    message, field_name = "", None
    body = answer.body
    if isinstance(body, dict):
        # citymodels' own errors are {"code","message","field"}; API Gateway's {"message"}
        # or {"Message"}.
        message = str(body.get("message") or body.get("Message") or "")
        field_name = body.get("field")
    elif body is not None:
        message = _clip(body if isinstance(body, str) else json.dumps(body))
    message = message or _phrase(answer.status)
    hint = ""
    if answer.status == 401:
        hint = " (check --api-key or CITYMODELS_API_KEY)"
    elif answer.status == 403:
        hint = " (the key has no access to this city)"
    return ApiCallFailed(
        f"the API answered {answer.status}: {message}{hint}",
        status=answer.status,
        field=field_name,
    )


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
