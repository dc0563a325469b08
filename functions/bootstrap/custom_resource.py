"""The Bootstrap custom resource: CloudFormation's request in, one response out.

CloudFormation sends Create, Update and Delete requests and then waits (up to an hour)
for a response PUT to the request's pre-signed ``ResponseURL``. Whatever happens, this
module answers exactly once: SUCCESS with the artifacts' locations, or FAILED with the
reason, which CloudFormation shows in the stack's events.

- Create / Update: check the stack name (job names are ``cm-{stack}-...``, at most 63
  characters, so the name has at most ``MAX_STACK_LENGTH`` characters; and lower-case,
  because SageMaker lower-cases the ARNs the functions' IAM statements match), then
  write the artifacts (:func:`artifacts.publish`).
- Delete: SUCCESS, nothing else: the DataBucket is retained and so is what is in it
  (a stack that failed on the name check also gets its Delete answered).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from artifacts import publish

from citymodels.errors import InvalidStackName
from citymodels.jobs import validate_stack_name

SUCCESS = "SUCCESS"
FAILED = "FAILED"
MAX_REASON = 1000
"""CloudFormation shows the reason in the stack events; the whole response is capped at 4 KB."""
RESPONSE_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class Response:
    """What goes back to CloudFormation."""

    status: str
    reason: str
    physical_resource_id: str
    data: Mapping[str, str]

    def body(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The JSON body of the response to ``request``."""
        return {
            "Status": self.status,
            "Reason": self.reason[:MAX_REASON],
            "PhysicalResourceId": self.physical_resource_id,
            "StackId": request["StackId"],
            "RequestId": request["RequestId"],
            "LogicalResourceId": request["LogicalResourceId"],
            "NoEcho": False,
            "Data": dict(self.data),
        }


Sender = Callable[[str, dict[str, Any]], None]


def check_stack_name(stack: str) -> str:
    """Return ``stack`` if this application can be deployed under it, else raise.

    Raises
    ------
    InvalidStackName
        Too long or malformed for job names (:func:`citymodels.jobs.validate_stack_name`),
        or not lower-case.
    """
    validate_stack_name(stack)
    if stack != stack.lower():
        raise InvalidStackName(
            f"stack name {stack!r} must be lower-case: SageMaker lower-cases the ARNs of "
            f"the jobs (cm-{stack}-...) and of the endpoint, so the functions' IAM "
            "statements scoped to this name would never match",
            field="stack",
        )
    return stack


def stack_name(request: Mapping[str, Any]) -> str:
    """The stack's name: the ``StackName`` property, else the name inside ``StackId``."""
    properties = request.get("ResourceProperties") or {}
    name = properties.get("StackName")
    if isinstance(name, str) and name:
        return name
    # arn:aws:cloudformation:REGION:ACCOUNT:stack/NAME/UUID
    return str(request["StackId"]).split(":", 5)[-1].split("/")[1]


def handle(request: Mapping[str, Any], s3: Any, log_stream: str = "") -> Response:
    """Carry out one custom resource request; never raise.

    Parameters
    ----------
    request
        The event CloudFormation sent.
    s3
        A boto3 S3 client.
    log_stream
        Named in a failure's reason, so the stack event points at the details.
    """
    request_type = request.get("RequestType")
    physical_id = (
        request.get("PhysicalResourceId") or f"{request.get('LogicalResourceId')}-artifacts"
    )
    try:
        if request_type == "Delete":
            return Response(SUCCESS, "retained with the DataBucket", physical_id, {})
        if request_type not in ("Create", "Update"):
            raise ValueError(f"unknown RequestType {request_type!r}")
        properties = request.get("ResourceProperties") or {}
        bucket = properties.get("Bucket")
        if not isinstance(bucket, str) or not bucket:
            raise ValueError("the Bucket property (the DataBucket's name) is missing")
        check_stack_name(stack_name(request))
        published = publish(s3, bucket)
        return Response(SUCCESS, "artifacts written", physical_id, published.to_data())
    except Exception as err:  # CloudFormation must get an answer, whatever failed
        reason = (
            str(err.message if isinstance(err, InvalidStackName) else err) or type(err).__name__
        )
        if log_stream:
            reason = f"{reason} (log stream {log_stream})"
        return Response(FAILED, reason, physical_id, {})


def send_response(url: str, body: dict[str, Any]) -> None:
    """PUT ``body`` to the pre-signed ``ResponseURL`` (signed with an empty content type)."""
    data = json.dumps(body).encode("utf-8")
    request = urllib.request.Request(  # CloudFormation's pre-signed https URL
        url,
        data=data,
        method="PUT",
        headers={"Content-Type": "", "Content-Length": str(len(data))},
    )
    with urllib.request.urlopen(request, timeout=RESPONSE_TIMEOUT_SECONDS) as answer:
        answer.read()


def respond(
    request: Mapping[str, Any], s3: Any, *, log_stream: str = "", send: Sender = send_response
) -> Response:
    """Handle ``request`` and send the response to its ``ResponseURL``; return the response."""
    response = handle(request, s3, log_stream)
    send(request["ResponseURL"], response.body(request))
    return response
