"""The SageMaker job operations on the wire: a request in, the backend called, an answer out.

The AWS endpoint (``local/aws.py``) hands each ``X-Amz-Target: SageMaker.<operation>``
of :data:`OPERATIONS` (botocore's JSON protocol) to :func:`handle` with the decoded
JSON body; moto serves every other SageMaker operation. :func:`handle` checks the
request against botocore's model (:mod:`.shapes`), calls the backend
(:class:`~.models.JobService`) and shapes the JSON answer: ``Create*`` the job's ARN,
``Describe*`` the job as it renders itself, ``Stop*`` nothing, ``List*`` the
summaries its filters select, sorted and paged (``NextToken``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from citymodels_devkit.local.sagemaker.exceptions import (
    SerializationException,
    ValidationException,
)
from citymodels_devkit.local.sagemaker.models import JOB_PREFIX
from citymodels_devkit.local.sagemaker.runner import PROCESSING, TRAINING
from citymodels_devkit.local.sagemaker.shapes import validate_request

if TYPE_CHECKING:
    from citymodels_devkit.local.sagemaker.models import JobService

__all__ = ["OPERATIONS", "handle"]

OPERATIONS: Final = frozenset(
    {
        "CreateProcessingJob",
        "DescribeProcessingJob",
        "StopProcessingJob",
        "ListProcessingJobs",
        "CreateTrainingJob",
        "DescribeTrainingJob",
        "StopTrainingJob",
        "ListTrainingJobs",
    }
)
"""The SageMaker operations :func:`handle` serves; moto serves the rest."""


def handle(jobs: JobService, operation: str, request: Mapping[str, Any]) -> dict[str, Any]:
    """Serve one SageMaker API operation of :data:`OPERATIONS`.

    Parameters
    ----------
    jobs
        The backend.
    operation
        ``CreateProcessingJob``, ``DescribeTrainingJob``...
    request
        The decoded JSON request.

    Returns
    -------
    dict
        The JSON response (times as epoch seconds, as botocore reads them).

    Raises
    ------
    SageMakerError
        The API's error answers.
    """
    if not isinstance(request, Mapping):
        raise SerializationException("the request body must be a JSON object")
    request = dict(request)
    kind = TRAINING if "Training" in operation else PROCESSING
    prefix = JOB_PREFIX[kind]
    verb = operation.split(prefix, 1)[0]
    if operation not in OPERATIONS:
        raise ValidationException(f"the job service does not serve {operation}")
    validate_request(operation, request)
    if verb == "Create":
        return {f"{prefix}JobArn": jobs.create(kind, request)}
    if verb == "List":
        return _page(prefix, jobs.summaries(kind, request), request)
    name = request[f"{prefix}JobName"]
    if verb == "Describe":
        return jobs.describe(kind, name)
    jobs.stop(kind, name)
    return {}


def _page(
    prefix: str, summaries: list[dict[str, Any]], request: Mapping[str, Any]
) -> dict[str, Any]:
    """A ``List*`` answer: ``summaries`` sorted as asked, one page of them."""
    sort_by = request.get("SortBy", "CreationTime")
    sort_key = {
        "Name": f"{prefix}JobName",
        "Status": f"{prefix}JobStatus",
    }.get(sort_by, "CreationTime")
    summaries.sort(
        key=lambda s: s[sort_key], reverse=request.get("SortOrder", "Descending") != "Ascending"
    )
    start = int(request.get("NextToken") or 0)
    size = int(request.get("MaxResults") or 10)
    page = summaries[start : start + size]
    answer: dict[str, Any] = {f"{prefix}JobSummaries": page}
    if start + size < len(summaries):
        answer["NextToken"] = str(start + size)
    return answer
