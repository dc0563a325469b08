"""The inference pipeline's first container: raw house rows → Linear Learner's input.

Runs in SageMaker's scikit-learn serving container (framework 1.2-1, Python 3.9) as the
preprocessor model's entry point, with the ``citymodels`` package shipped in the
model's ``code/`` directory. It implements the container's handler interface:
``model_fn``, ``input_fn``, ``predict_fn``, ``output_fn``.

- Accepts ``text/csv`` rows of the eight raw features (no PRICE, no header), or
  ``application/json`` ``{"instances": [{"YEAR_BUILT": 1995, ..., "DECK": "n"}, ...]}``
  (a list of eight values per instance is also accepted).
- Emits ``text/csv`` rows of the ten encoded features, which the Linear Learner
  container accepts.

The transform is :func:`citymodels.schema.encode_values`, the same one the processing
job trained on; it has no per-city state, so one preprocessor serves every city.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from citymodels.errors import InvalidRecord
from citymodels.schema import (
    ENCODED_FEATURES,
    FEATURES,
    SCHEMA_VERSION,
    encode_record,
    encode_values,
)

PREPROCESSOR_FILE = "preprocessor.json"
MAX_ROWS = 1000


class Preprocessor:
    """The preprocessor model: the schema it was built for and the transform."""

    def __init__(self, schema_version: str = SCHEMA_VERSION) -> None:
        if schema_version != SCHEMA_VERSION:
            raise ValueError(
                f"preprocessor artifact is for schema {schema_version}, this code is "
                f"schema {SCHEMA_VERSION}: deploy the matching preprocessor"
            )
        self.schema_version = schema_version

    def transform(self, rows: Sequence[Sequence[float]]) -> list[list[float]]:
        """Rows are already encoded by :func:`input_fn`; kept as the model's one step."""
        return [list(row) for row in rows]


def preprocessor_document() -> dict[str, Any]:
    """Return the content of ``preprocessor.json``, the preprocessor model artifact."""
    return {
        "format": "citymodels-preprocessor",
        "schema_version": SCHEMA_VERSION,
        "raw_features": list(FEATURES),
        "encoded_features": list(ENCODED_FEATURES),
    }


def model_fn(model_dir: str) -> Preprocessor:
    """Load the preprocessor from the model directory (``preprocessor.json``)."""
    path = Path(model_dir) / PREPROCESSOR_FILE
    document = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    return Preprocessor(str(document.get("schema_version", SCHEMA_VERSION)))


def input_fn(request_body: bytes | str, request_content_type: str) -> list[list[float]]:
    """Parse and encode the request rows; raise ValueError naming the bad row and field."""
    if isinstance(request_body, bytes):
        try:
            request_body = request_body.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError("request body is not UTF-8") from err
    content_type = (request_content_type or "").split(";")[0].strip().lower()
    if content_type == "text/csv":
        lines = [line for line in request_body.splitlines() if line.strip()]
        rows = [_encode(i, line.split(",")) for i, line in enumerate(lines)]
    elif content_type == "application/json":
        rows = _from_json(request_body)
    else:
        raise ValueError(
            f"unsupported content type {request_content_type!r}; use text/csv or application/json"
        )
    if not rows:
        raise ValueError("the request has no rows")
    if len(rows) > MAX_ROWS:
        raise ValueError(f"the request has {len(rows)} rows; at most {MAX_ROWS} are accepted")
    return rows


def predict_fn(input_data: list[list[float]], model: Preprocessor) -> list[list[float]]:
    """Return the encoded rows (the pipeline's next container predicts)."""
    return model.transform(input_data)


def output_fn(prediction: list[list[float]], accept: str) -> tuple[str, str]:
    """Serialise the encoded rows as ``text/csv`` for Linear Learner."""
    wanted = (accept or "text/csv").split(";")[0].strip().lower()
    if wanted not in ("text/csv", "*/*"):
        raise ValueError(f"unsupported accept type {accept!r}; this container emits text/csv")
    body = "\n".join(",".join(repr(v) for v in row) for row in prediction)
    return body + "\n", "text/csv"


def _from_json(text: str) -> list[list[float]]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"request body is not JSON: {err.msg} at position {err.pos}") from err
    if not isinstance(document, dict) or not isinstance(document.get("instances"), list):
        raise ValueError('JSON body must be {"instances": [...]}')
    return [_encode(i, instance) for i, instance in enumerate(document["instances"])]


def _encode(index: int, instance: object) -> list[float]:
    try:
        if isinstance(instance, dict):
            return encode_record(instance)
        if isinstance(instance, list):
            return encode_values(instance)
        raise InvalidRecord(f"expected an object or a list, got {type(instance).__name__}")
    except InvalidRecord as err:
        raise ValueError(f"row {index + 1}: {err.message}") from err
