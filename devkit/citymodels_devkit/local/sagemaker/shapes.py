"""Requests checked against botocore's SageMaker service model, as the SageMaker API does.

botocore validates a request before it sends it, but a client can turn that off or
speak HTTP itself; SageMaker checks again and answers ``ValidationException`` with a
message that names every broken constraint. :func:`validate_request` does the same
from botocore's own model (required members, types, lengths, ranges, enums,
patterns), so nothing here restates a rule of the API.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from citymodels_devkit.local.sagemaker.exceptions import ValidationException

__all__ = ["validate_request"]


@cache
def _service_model() -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model("sagemaker")


@cache
def _compiled(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:  # a Java-only construct (\p{L}...): not checked locally
        return None


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def validate_request(operation: str, request: Mapping[str, Any]) -> None:
    """Validate a request as the SageMaker API does.

    Raises
    ------
    ValidationException
        With SageMaker's message: ``N validation error(s) detected: Value ... at
        'processingJobName' failed to satisfy constraint: ...``.
    """
    shape = _service_model().operation_model(operation).input_shape
    errors: list[str] = []
    _check(shape, request, "", errors)
    if errors:
        count = len(errors)
        plural = "error" if count == 1 else "errors"
        raise ValidationException(f"{count} validation {plural} detected: " + "; ".join(errors))


def _check(shape: Any, value: Any, path: str, errors: list[str]) -> None:
    kind = shape.type_name
    shown = "null" if value is None else f"'{value}'" if isinstance(value, str) else str(value)
    at = f"at '{path}'" if path else "in the request"

    def fail(constraint: str) -> None:
        errors.append(f"Value {shown} {at} failed to satisfy constraint: {constraint}")

    if kind == "structure":
        if not isinstance(value, dict):
            fail("Member must be a structure")
            return
        for name in shape.required_members:
            if value.get(name) is None:
                where = f"{path}.{_camel(name)}" if path else _camel(name)
                errors.append(
                    f"Value null at '{where}' failed to satisfy constraint: Member must not be null"
                )
        for name, member in shape.members.items():
            if value.get(name) is not None:
                where = f"{path}.{_camel(name)}" if path else _camel(name)
                _check(member, value[name], where, errors)
        return
    if kind == "list":
        if not isinstance(value, list):
            fail("Member must be a list")
            return
        _check_length(shape, len(value), fail)
        for index, item in enumerate(value, start=1):
            _check(shape.member, item, f"{path}.{index}.member", errors)
        return
    if kind == "map":
        if not isinstance(value, dict):
            fail("Member must be a map")
            return
        _check_length(shape, len(value), fail)
        for key, item in value.items():
            _check(shape.key, key, f"{path}.key", errors)
            _check(shape.value, item, f"{path}.{key}", errors)
        return
    if kind == "string":
        if not isinstance(value, str):
            fail("Member must be a string")
            return
        _check_length(shape, len(value), fail)
        enum = shape.metadata.get("enum")
        if enum and value not in enum:
            fail(f"Member must satisfy enum value set: [{', '.join(enum)}]")
        pattern = shape.metadata.get("pattern")
        compiled = _compiled(pattern) if pattern else None
        if compiled is not None and compiled.fullmatch(value) is None:
            fail(f"Member must satisfy regular expression pattern: {pattern}")
        return
    if kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            fail("Member must be an integer")
            return
        if "min" in shape.metadata and value < shape.metadata["min"]:
            fail(f"Member must have value greater than or equal to {shape.metadata['min']}")
        if "max" in shape.metadata and value > shape.metadata["max"]:
            fail(f"Member must have value less than or equal to {shape.metadata['max']}")
        return
    if kind == "boolean" and not isinstance(value, bool):
        fail("Member must be a boolean")
    elif kind in ("float", "double") and (
        isinstance(value, bool) or not isinstance(value, (int, float))
    ):
        fail("Member must be a number")


def _check_length(shape: Any, length: int, fail: Callable[[str], None]) -> None:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if low is not None and length < low:
        fail(f"Member must have length greater than or equal to {low}")
    if high is not None and length > high:
        fail(f"Member must have length less than or equal to {high}")
