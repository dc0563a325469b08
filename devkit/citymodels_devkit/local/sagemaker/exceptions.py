"""The SageMaker API's error answers, as botocore's JSON protocol reads them.

The backend (:mod:`.models`) and the request checks (:mod:`.shapes`) raise them;
the AWS endpoint (``local/aws.py``) answers :meth:`SageMakerError.to_json` with
:attr:`SageMakerError.status`, which botocore turns into ``ClientError`` with
``Error.Code`` and ``Error.Message``.
"""

from __future__ import annotations

__all__ = [
    "ResourceInUse",
    "ResourceLimitExceeded",
    "SageMakerError",
    "SerializationException",
    "ValidationException",
]


class SageMakerError(Exception):
    """An error answer of the SageMaker API (HTTP 400, ``{"__type", "Message"}``)."""

    code = "InternalFailure"
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, str]:
        """Return the error body botocore's JSON protocol parses."""
        return {"__type": self.code, "Message": self.message}


class ValidationException(SageMakerError):
    """The request is invalid, or names a job that does not exist."""

    code = "ValidationException"


class ResourceInUse(SageMakerError):
    """A job of that name exists already."""

    code = "ResourceInUse"


class ResourceLimitExceeded(SageMakerError):
    """More jobs of that kind are running than the configured capacity."""

    code = "ResourceLimitExceeded"


class SerializationException(SageMakerError):
    """The request body is not a JSON object."""

    code = "SerializationException"
