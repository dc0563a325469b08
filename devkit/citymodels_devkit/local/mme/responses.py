"""What an InvokeEndpoint client gets from the local MME: the answer on the wire, the errors.

:class:`InvokeResult` is one answer, success or error, ready for the wire in
sagemaker-runtime's ``rest-json`` format (:meth:`InvokeResult.render`); the functions
below build each error the endpoint answers, with SageMaker's code, status and
message (the table in the package's docstring), so that boto3 parses them as AWS's.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Final, NamedTuple

__all__ = [
    "BODY_TOO_LARGE",
    "JSON",
    "MAX_BODY_BYTES",
    "MAX_TARGET_MODEL_LENGTH",
    "InvokeResult",
    "artifact_missing",
    "download_failed",
    "load_failed",
    "model_error",
    "model_not_ready",
    "target_model_problem",
]

MAX_TARGET_MODEL_LENGTH: Final = 1024
"""InvokeEndpoint's limit on TargetModel (botocore's service model)."""
MAX_BODY_BYTES: Final = 6 * 1024 * 1024
"""InvokeEndpoint's limit on the request body (botocore's service model: 6 MB)."""
BODY_TOO_LARGE: Final = (
    "1 validation error detected: Value at 'body' failed to satisfy constraint: "
    f"Member must have length less than or equal to {MAX_BODY_BYTES}"
)
"""The ValidationError message of a body over :data:`MAX_BODY_BYTES`."""
JSON: Final = "application/json"


class InvokeResult(NamedTuple):
    """One InvokeEndpoint answer: success or one of the MME's errors.

    Immutable (a named tuple: built on every request, it must cost next to nothing; a
    frozen dataclass costs ~2 µs here), and shared by every request waiting on one
    failed load.

    Attributes
    ----------
    status
        HTTP status: 200, or 400 (ValidationError), 424 (ModelError), 429
        (ModelNotReadyException).
    body
        The response body: the model's answer, or the error's JSON document.
    content_type
        The body's media type.
    headers
        Further response headers (lower-case names, ready for ASGI), e.g.
        ``x-amzn-invoked-production-variant`` or ``x-amzn-errortype``.
    error_code
        ``None`` on success, else the error code botocore reports as
        ``response["Error"]["Code"]``.
    message
        The error message (``response["Error"]["Message"]``), ``None`` on success.
    original_status_code
        A ModelError's ``OriginalStatusCode`` (the failing container's status).
    """

    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[bytes, bytes], ...] = ()
    error_code: str | None = None
    message: str | None = None
    original_status_code: int | None = None

    @property
    def ok(self) -> bool:
        """Whether this is a successful answer (HTTP 200)."""
        return self.status == 200

    def render(self, request_id: str | None = None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Return the HTTP response: status, headers, body.

        The wire format is sagemaker-runtime's (``rest-json``): an error carries its code in
        ``x-amzn-ErrorType`` and a JSON body with ``Message``; a ModelError's body also has
        ``OriginalStatusCode``, ``OriginalMessage``, ``LogStreamArn`` and ``ErrorCode``,
        which botocore puts at the top level of ``ClientError.response``. A success
        carries ``x-Amzn-Invoked-Production-Variant``.

        Parameters
        ----------
        request_id
            The ``x-amzn-RequestId`` header; a random UUID when omitted.

        Returns
        -------
        tuple of (int, list of (bytes, bytes), bytes)
            Status, headers (lower-case names, as ASGI's ``http.response.start`` wants)
            and body.
        """
        headers = [
            (b"content-type", self.content_type.encode("latin-1")),
            *self.headers,
            (b"content-length", str(len(self.body)).encode()),
            (b"x-amzn-requestid", (request_id or str(uuid.uuid4())).encode("latin-1")),
        ]
        return self.status, headers, self.body

    @classmethod
    def error(cls, status: int, code: str, message: str, **fields: Any) -> InvokeResult:
        """Build an error answer with ``code`` (botocore's ``Error.Code``) and a message.

        Parameters
        ----------
        status
            The HTTP status (400 ValidationError, 424 ModelError, 429 ModelNotReadyException).
        code
            The error code, sent in ``x-amzn-ErrorType``.
        message
            The error message (``Message`` in the body).
        **fields
            Further members of the error document (ModelError's ``OriginalStatusCode``...).
        """
        document = {"Message": message, **fields}
        return cls(
            status=status,
            body=json.dumps(document).encode(),
            content_type=JSON,
            headers=((b"x-amzn-errortype", code.encode()),),
            error_code=code,
            message=message,
            original_status_code=fields.get("OriginalStatusCode"),
        )

    @classmethod
    def validation_error(cls, message: str) -> InvokeResult:
        """A 400 ``ValidationError`` (also for the front's own checks, e.g. unknown endpoint)."""
        return cls.error(400, "ValidationError", message)


def target_model_problem(target_model: str) -> str | None:
    """Return why ``target_model`` is not acceptable, or ``None``."""
    if not target_model:
        return (
            "1 validation error detected: Value at 'targetModel' failed to satisfy "
            "constraint: Member must have length greater than or equal to 1 "
            "(a multi-model endpoint needs the X-Amzn-SageMaker-Target-Model header)"
        )
    if len(target_model) > MAX_TARGET_MODEL_LENGTH:
        return (
            "1 validation error detected: Value at 'targetModel' failed to satisfy "
            f"constraint: Member must have length less than or equal to {MAX_TARGET_MODEL_LENGTH}"
        )
    if target_model[0].isspace() or not target_model.isprintable():
        return (
            f"1 validation error detected: Value {target_model[:100]!r} at 'targetModel' "
            "failed to satisfy constraint: Member must satisfy regular expression pattern: "
            "\\A\\S[\\p{Print}]*\\z"
        )
    if ".." in target_model or target_model.startswith("/"):
        return (
            f"TargetModel {target_model[:100]!r} is not valid: it must be a path relative "
            "to the model data prefix, without '..'"
        )
    return None


def model_error(
    container: str,
    original_status: int,
    message: str,
    *,
    region: str,
    account_id: str,
    log_group: str,
) -> InvokeResult:
    """A 424 ``ModelError``: container ``container`` answered ``original_status``."""
    kind = "client" if original_status < 500 else "server"
    console = (
        f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}"
        f"#logEventViewer:group={log_group}"
    )
    return InvokeResult.error(
        424,
        "ModelError",
        f"Received {kind} error ({original_status}) from {container} "
        f'with message "{message}". See {console} in account {account_id} '
        "for more information.",
        OriginalStatusCode=original_status,
        OriginalMessage=message,
        LogStreamArn=f"arn:aws:logs:{region}:{account_id}:log-group:{log_group}",
        ErrorCode=f"{kind.upper()}_ERROR_FROM_MODEL",
    )


def model_not_ready(target_model: str, waited_seconds: float) -> InvokeResult:
    """A 429 ``ModelNotReadyException``: the model still loads after the wait."""
    return InvokeResult.error(
        429,
        "ModelNotReadyException",
        f"Model {target_model} is not ready: it is still being downloaded or loaded "
        f"after {waited_seconds:g} s. Retry the request.",
    )


def artifact_missing(target_model: str, location: str) -> InvokeResult:
    """A 400 ``ValidationError``: no artifact at ``location`` (may be empty)."""
    where = f" from {location}" if location else ""
    return InvokeResult.validation_error(
        f"Failed to download model data for target model {target_model}{where}. "
        "Please ensure that there is an object located at the URL and that the "
        "role passed to CreateModel has permissions to download the model."
    )


def download_failed(target_model: str, error: Exception) -> InvokeResult:
    """A 400 ``ValidationError``: the artifact could not be downloaded."""
    return InvokeResult.validation_error(
        f"Failed to download model data for target model {target_model}: {error}"
    )


def load_failed(target_model: str, error: Exception) -> InvokeResult:
    """A 500 ``InternalFailure``: a load failed for a reason not the artifact's."""
    return InvokeResult.error(500, "InternalFailure", f"Loading {target_model} failed: {error}")
