"""Named domain errors.

Every error the contracts raise is a :class:`CityModelsError` with a stable ``code``
(for JSON error bodies and reports) and a message meant for the person who made the
mistake. They also subclass :class:`ValueError` where the cause is a bad value, so
callers that only know the standard library still catch them.

Each class also carries the HTTP status that answers it (``status_code``), as
Powertools' ``ServiceError`` does, so the HTTP API never keeps a table apart from the
errors; an error the API does not expect from a client keeps the default, 500.
"""

from __future__ import annotations


class CityModelsError(Exception):
    """Base class of citymodels' domain errors.

    Parameters
    ----------
    message
        What went wrong, for a person.
    field
        The input field (city, key, version, ...) the error is about, when there is one.

    Attributes
    ----------
    code
        Stable identifier of the error, for JSON error bodies and reports.
    status_code
        The HTTP status answering it (500: not a client's mistake, or not expected).
    """

    code = "citymodels_error"
    status_code = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, str]:
        """Return the error as a JSON-ready mapping (``code``, ``message``, ``field``)."""
        body = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class InvalidCityId(CityModelsError, ValueError):
    """A city id that does not match ``^[A-Za-z][A-Za-z0-9_-]{0,63}$``."""

    code = "invalid_city"
    status_code = 400


class InvalidKey(CityModelsError, ValueError):
    """An S3 key, or a TargetModel name, that does not follow the layout."""

    code = "invalid_key"


class InvalidVersion(CityModelsError, ValueError):
    """A version id that is not of the form minted by :func:`citymodels.versions.mint_version`."""

    code = "invalid_version"
    status_code = 400


class InvalidStackName(CityModelsError, ValueError):
    """A stack name that cannot scope SageMaker job names (see :mod:`citymodels.jobs`)."""

    code = "invalid_stack_name"


class InvalidJobName(CityModelsError, ValueError):
    """A job name that this stack did not mint."""

    code = "invalid_job_name"


class InvalidRecord(CityModelsError, ValueError):
    """A house record (features) with a missing, unparsable or implausible value."""

    code = "invalid_record"
    status_code = 400


class InvalidUpload(CityModelsError, ValueError):
    """An uploaded CSV that failed validation; ``report`` says which rows and why."""

    code = "invalid_upload"

    def __init__(self, message: str, report: object) -> None:
        super().__init__(message)
        self.report = report
