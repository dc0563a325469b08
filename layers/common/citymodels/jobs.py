"""Deterministic, stack-scoped SageMaker job names (docs/design.md §3).

A job name is ``cm-{stack}-{hash}-{attempt}``:

- ``stack`` scopes the name to one deployment: each stack's EventBridge rules match the
  prefix ``cm-{stack}-``, so two stacks in one account never take each other's events.
  Because one stack name can be a prefix of another (``prod`` / ``prod-eu``), a handler
  also checks the whole name with :func:`parse_job_name` and ignores the rest.
- ``hash`` is 20 hex digits (80 bits) of SHA-256 over the city and the upload's content
  hash: an event delivered twice mints the same name, and SageMaker's ResourceInUse
  answer to the second create makes it a no-op.
- ``attempt`` counts runs of the same content for the city: identical content
  re-uploaded after a failed run gets the next attempt, so a new job.

City ids may contain ``_`` and be 64 characters long, neither of which fits a job name,
so city, run and version travel in the job's Environment and Tags and in the registry.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from citymodels.cities import validate_city_id
from citymodels.errors import InvalidJobName, InvalidStackName

JOB_NAME_PATTERN = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*")
"""SageMaker's pattern for processing and training job names."""
MAX_JOB_NAME_LENGTH = 63
HASH_LENGTH = 20
MAX_ATTEMPT = 999
MAX_STACK_LENGTH = MAX_JOB_NAME_LENGTH - len("cm-") - 1 - HASH_LENGTH - 1 - len(str(MAX_ATTEMPT))
"""35: the longest stack name whose job names still fit SageMaker's 63 characters."""
STACK_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class JobName:
    """A parsed job name."""

    stack: str
    hash: str
    attempt: int

    def __str__(self) -> str:
        return f"{job_name_prefix(self.stack)}{self.hash}-{self.attempt}"


def validate_stack_name(stack: str) -> str:
    """Return ``stack`` if job names can be scoped by it, else raise :class:`InvalidStackName`."""
    if not isinstance(stack, str) or STACK_PATTERN.fullmatch(stack) is None:
        raise InvalidStackName(
            f"stack name {stack!r} must start with a letter and contain only letters, "
            "digits and '-' (CloudFormation's rule)",
            field="stack",
        )
    if len(stack) > MAX_STACK_LENGTH or stack.endswith("-") or "--" in stack:
        raise InvalidStackName(
            f"stack name {stack!r} must be at most {MAX_STACK_LENGTH} characters, without a "
            "trailing or doubled '-', so that its SageMaker job names fit 63 characters",
            field="stack",
        )
    return stack


def job_name_prefix(stack: str) -> str:
    """Return ``cm-{stack}-``, the prefix every job of this stack starts with."""
    return f"cm-{validate_stack_name(stack)}-"


def content_job_hash(city: str, content_sha256: str) -> str:
    """Return the 20-hex-digit hash of (city, upload content) used in job names."""
    if not isinstance(content_sha256, str) or _SHA256.fullmatch(content_sha256) is None:
        raise InvalidJobName("content hash must be 64 lowercase hex digits", field="sha256")
    material = f"{validate_city_id(city)}\n{content_sha256}".encode()
    return hashlib.sha256(material).hexdigest()[:HASH_LENGTH]


def job_name(stack: str, city: str, content_sha256: str, attempt: int = 1) -> str:
    """Return the job name of attempt ``attempt`` at training ``city`` on this content.

    Parameters
    ----------
    stack
        The stack name (at most :data:`MAX_STACK_LENGTH` characters).
    city
        The city id.
    content_sha256
        SHA-256 of the upload's bytes (lowercase hex), from its validation report.
    attempt
        1 for the first run of this content for this city, then 2, 3, ...

    Returns
    -------
    str
        A name valid for SageMaker (``^[a-zA-Z0-9](-*[a-zA-Z0-9])*$``, ≤ 63 characters).
    """
    if isinstance(attempt, bool) or not isinstance(attempt, int) or not 1 <= attempt <= MAX_ATTEMPT:
        raise InvalidJobName(
            f"attempt must be 1 to {MAX_ATTEMPT}, got {attempt!r}", field="attempt"
        )
    name = f"{job_name_prefix(stack)}{content_job_hash(city, content_sha256)}-{attempt}"
    # Guaranteed by the bounds above; kept as a check because SageMaker rejects anything else.
    assert len(name) <= MAX_JOB_NAME_LENGTH, name
    assert JOB_NAME_PATTERN.fullmatch(name), name
    return name


def parse_job_name(name: str, stack: str) -> JobName | None:
    """Parse a job name minted by ``stack``; return None for any other name.

    Handlers call this on every job event, because EventBridge's prefix match alone
    also admits the jobs of a stack whose name starts with this one's plus ``-``.
    """
    prefix = job_name_prefix(stack)
    if not isinstance(name, str) or not name.startswith(prefix):
        return None
    digest, sep, attempt = name[len(prefix) :].partition("-")
    if (
        not sep
        or len(digest) != HASH_LENGTH
        or any(c not in "0123456789abcdef" for c in digest)
        or not attempt.isdigit()
        or attempt.startswith("0")
        or int(attempt) > MAX_ATTEMPT
    ):
        return None
    return JobName(stack=stack, hash=digest, attempt=int(attempt))
