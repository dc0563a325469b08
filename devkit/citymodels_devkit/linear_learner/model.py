"""A trained local Linear Learner model: artifact format, loading, prediction, inference.

The artifact is ``model.tar.gz`` holding one JSON document, ``linear-learner.json``
(no pickle, nothing executable). Its weights and bias are in the *original* feature and
label units, with the training normalisation already folded in, so a prediction is a
plain dot product::

    score = bias + sum(weights[j] * features[j])

The normalisation is recorded next to them for reference only. ``docs/linear-learner.md``
documents every field.

This module is on the inference hot path (the local multi-model endpoint calls
:meth:`LinearLearnerModel.invoke` for every request), so it uses plain Python floats
and does not import numpy: a one-row prediction is a ten-term sum.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import mul
from pathlib import Path
from typing import Any, Final

__all__ = [
    "ARTIFACT_NAME",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MODEL_FILE_NAME",
    "InferenceError",
    "LinearLearnerModel",
    "ModelFormatError",
    "Normalization",
    "load_model",
]

FORMAT_NAME: Final = "citymodels-linear-learner"
FORMAT_VERSION: Final = 1
ARTIFACT_NAME: Final = "model.tar.gz"
MODEL_FILE_NAME: Final = "linear-learner.json"
_MAX_MODEL_JSON_BYTES: Final = 16 * 1024 * 1024
_GZIP_MAGIC: Final = b"\x1f\x8b"

JsonValue = str | int | float | bool | None


class InferenceError(ValueError):
    """An inference request the model cannot answer (the caller's mistake: a 4xx)."""


class ModelFormatError(ValueError):
    """A model artifact that is not a readable local Linear Learner model."""


@dataclass(frozen=True)
class Normalization:
    """The standardisation applied during training, recorded for reference.

    Training used ``(x - feature_mean) / feature_scale`` and
    ``(y - label_mean) / label_scale``; the stored weights already undo it.
    """

    feature_mean: tuple[float, ...]
    feature_scale: tuple[float, ...]
    label_mean: float = 0.0
    label_scale: float = 1.0


@dataclass(frozen=True)
class LinearLearnerModel:
    """A linear regressor in original units: ``score = bias + weights · features``.

    Build one with :func:`~citymodels_devkit.linear_learner.fit` or
    :func:`~citymodels_devkit.linear_learner.train`, or read one with :func:`load_model`.
    """

    weights: tuple[float, ...]
    bias: float
    normalization: Normalization
    loss: str = "squared_loss"
    predictor_type: str = "regressor"
    hyperparameters: Mapping[str, JsonValue] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    epochs_run: int = 0
    best_candidate: Mapping[str, JsonValue] = field(default_factory=dict)

    @property
    def feature_dim(self) -> int:
        """Number of features a row must have."""
        return len(self.weights)

    def predict(self, rows: Sequence[Sequence[float]]) -> list[float]:
        """Score rows of features.

        Parameters
        ----------
        rows
            Each row holds exactly :attr:`feature_dim` numbers, in training column order
            (no label).

        Returns
        -------
        list of float
            One score (predicted label, original units) per row.

        Raises
        ------
        InferenceError
            If a row has the wrong number of values, a value is not a number, or a
            score is not finite. Rows are numbered from 1.
        """
        weights = self.weights
        bias = self.bias
        width = len(weights)
        scores: list[float] = []
        for number, row in enumerate(rows, start=1):
            if len(row) != width:
                raise InferenceError(f"row {number}: expected {width} features, got {len(row)}")
            try:
                score = bias + sum(map(mul, weights, row))
            except TypeError:
                raise InferenceError(f"row {number}: features must be numbers") from None
            # NaN or inf in, NaN or inf out: refuse rather than answer with invalid JSON.
            if not math.isfinite(score):
                raise InferenceError(f"row {number}: features must be finite numbers")
            scores.append(score)
        return scores

    def invoke(
        self, body: bytes, content_type: str, accept: str = "application/json"
    ) -> tuple[bytes, str]:
        """Answer an inference request as the Linear Learner container does.

        Parameters
        ----------
        body
            The request body: ``text/csv`` rows of features (no label, no header), or
            ``application/json`` ``{"instances": [{"features": [...]}, ...]}``.
        content_type
            The request's Content-Type (parameters such as ``charset`` are ignored).
        accept
            The wanted response type: ``application/json`` (also for an empty value or
            ``*/*``) or ``application/jsonlines``.

        Returns
        -------
        tuple of (bytes, str)
            The response body, ``{"predictions": [{"score": ...}, ...]}``, and its
            content type.

        Raises
        ------
        InferenceError
            For an unsupported content type or accept, an unparseable body, a row with
            the wrong number of features (naming the row and the expected count).
        """
        media = _media_type(content_type)
        if media == "text/csv":
            rows = _parse_csv(body, self.feature_dim)
        elif media == "application/json":
            rows = _parse_json(body, self.feature_dim)
        else:
            raise InferenceError(
                f"unsupported content type {content_type!r}: use text/csv or application/json"
            )
        scores = self.predict(rows)
        wanted = _media_type(accept)
        if wanted in {"", "*/*", "application/json", "application/*"}:
            payload = {"predictions": [{"score": score} for score in scores]}
            return json.dumps(payload).encode(), "application/json"
        if wanted == "application/jsonlines":
            lines = "".join(json.dumps({"score": score}) + "\n" for score in scores)
            return lines.encode(), "application/jsonlines"
        raise InferenceError(
            f"unsupported accept {accept!r}: use application/json or application/jsonlines"
        )

    def to_json_dict(self) -> dict[str, Any]:
        """Return the artifact document (what ``linear-learner.json`` holds).

        Returns
        -------
        dict
            JSON-serialisable; see ``docs/linear-learner.md`` for the fields.
        """
        norm = self.normalization
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "predictor_type": self.predictor_type,
            "loss": self.loss,
            "feature_dim": self.feature_dim,
            "weights": list(self.weights),
            "bias": self.bias,
            "normalization": {
                "feature_mean": list(norm.feature_mean),
                "feature_scale": list(norm.feature_scale),
                "label_mean": norm.label_mean,
                "label_scale": norm.label_scale,
            },
            "hyperparameters": dict(self.hyperparameters),
            "metrics": dict(self.metrics),
            "epochs_run": self.epochs_run,
            "best_candidate": dict(self.best_candidate),
        }

    @classmethod
    def from_json_dict(cls, document: Mapping[str, Any]) -> LinearLearnerModel:
        """Build a model from an artifact document, checking its format.

        Parameters
        ----------
        document
            A parsed ``linear-learner.json``.

        Returns
        -------
        LinearLearnerModel

        Raises
        ------
        ModelFormatError
            If the document is not a supported version of the format or a field is
            missing or has the wrong type.
        """
        if document.get("format") != FORMAT_NAME:
            raise ModelFormatError(
                f"not a local Linear Learner model: format is {document.get('format')!r}, "
                f"expected {FORMAT_NAME!r}"
            )
        if document.get("format_version") != FORMAT_VERSION:
            raise ModelFormatError(
                f"unsupported model format_version {document.get('format_version')!r}: "
                f"this code reads version {FORMAT_VERSION}"
            )
        try:
            weights = _floats(document["weights"], "weights")
            norm = document["normalization"]
            normalization = Normalization(
                feature_mean=_floats(norm["feature_mean"], "normalization.feature_mean"),
                feature_scale=_floats(norm["feature_scale"], "normalization.feature_scale"),
                label_mean=_float(norm["label_mean"], "normalization.label_mean"),
                label_scale=_float(norm["label_scale"], "normalization.label_scale"),
            )
            model = cls(
                weights=weights,
                bias=_float(document["bias"], "bias"),
                normalization=normalization,
                loss=str(document["loss"]),
                predictor_type=str(document["predictor_type"]),
                hyperparameters=dict(document.get("hyperparameters", {})),
                metrics={k: float(v) for k, v in document.get("metrics", {}).items()},
                epochs_run=int(document.get("epochs_run", 0)),
                best_candidate=dict(document.get("best_candidate", {})),
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise ModelFormatError(f"malformed model document: {error!r}") from None
        if document.get("feature_dim") != len(weights):
            raise ModelFormatError(
                f"feature_dim {document.get('feature_dim')!r} does not match {len(weights)} weights"
            )
        return model

    def to_artifact_bytes(self) -> bytes:
        """Return ``model.tar.gz`` content; the same model always gives the same bytes.

        Returns
        -------
        bytes
            A gzip-compressed tar holding ``linear-learner.json``.
        """
        document = json.dumps(self.to_json_dict(), indent=2, allow_nan=False).encode()
        buffer = io.BytesIO()
        # Fixed timestamps: identical models give byte-identical artifacts, so content
        # hashes and "same upload, same model" checks work.
        info = tarfile.TarInfo(MODEL_FILE_NAME)
        info.size = len(document)
        info.mode = 0o644
        info.mtime = 0
        with (
            gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            tar.addfile(info, io.BytesIO(document))
        return buffer.getvalue()

    def save(self, model_dir: str | os.PathLike[str]) -> Path:
        """Write ``model.tar.gz`` into a directory (created if missing).

        Parameters
        ----------
        model_dir
            Where to write, e.g. SageMaker's ``/opt/ml/model``.

        Returns
        -------
        Path
            The artifact's path.
        """
        directory = Path(model_dir)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / ARTIFACT_NAME
        path.write_bytes(self.to_artifact_bytes())
        return path


def load_model(source: str | os.PathLike[str] | bytes) -> LinearLearnerModel:
    """Load a model from an artifact, an extracted artifact, or their bytes.

    Parameters
    ----------
    source
        One of: the path of ``model.tar.gz``; a directory holding either
        ``linear-learner.json`` (an extracted artifact, as a multi-model endpoint keeps
        it) or ``model.tar.gz``; the path of ``linear-learner.json``; or the bytes of
        either file.

    Returns
    -------
    LinearLearnerModel

    Raises
    ------
    ModelFormatError
        If the source is not a local Linear Learner model of a supported version.
    FileNotFoundError
        If the path does not exist.
    """
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        if path.is_dir():
            extracted = path / MODEL_FILE_NAME
            path = extracted if extracted.is_file() else path / ARTIFACT_NAME
        data = path.read_bytes()
    if data[:2] == _GZIP_MAGIC:
        data = _read_from_tar(data)
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFormatError(f"model document is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise ModelFormatError("model document must be a JSON object")
    return LinearLearnerModel.from_json_dict(document)


def _read_from_tar(data: bytes) -> bytes:
    # Only the one named member is read, in memory: nothing is extracted to disk, so
    # member paths ("../x", links) cannot write anywhere.
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                if member.name.removeprefix("./") != MODEL_FILE_NAME:
                    continue
                if not member.isfile() or member.size > _MAX_MODEL_JSON_BYTES:
                    raise ModelFormatError(f"{MODEL_FILE_NAME} in the artifact is not a small file")
                handle = tar.extractfile(member)
                if handle is None:  # pragma: no cover - isfile() members always have data
                    break
                return handle.read()
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ModelFormatError(f"artifact is not a readable tar.gz: {error}") from None
    raise ModelFormatError(f"artifact has no {MODEL_FILE_NAME}")


def _media_type(header: str) -> str:
    return header.split(";", 1)[0].strip().lower()


def _parse_csv(body: bytes, width: int) -> list[list[float]]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InferenceError(f"text/csv body is not UTF-8: {error}") from None
    rows: list[list[float]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        cells = line.split(",")
        if len(cells) != width:
            hint = " (send features only, no label)" if len(cells) == width + 1 else ""
            raise InferenceError(f"row {number}: expected {width} features, got {len(cells)}{hint}")
        try:
            row = [float(cell) for cell in cells]
        except ValueError:
            raise InferenceError(
                f"row {number}: every feature must be a number, got {line!r}"
            ) from None
        rows.append(row)
    if not rows:
        raise InferenceError("text/csv body has no rows")
    return rows


def _parse_json(body: bytes, width: int) -> list[list[float]]:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InferenceError(f"application/json body is not valid JSON: {error}") from None
    instances = document.get("instances") if isinstance(document, dict) else None
    if not isinstance(instances, list):
        raise InferenceError(
            'application/json body must be {"instances": [{"features": [...]}, ...]}'
        )
    if not instances:
        raise InferenceError("application/json body has no instances")
    rows: list[list[float]] = []
    for number, instance in enumerate(instances, start=1):
        features = instance.get("features") if isinstance(instance, dict) else None
        if not isinstance(features, list):
            raise InferenceError(f'instance {number}: must be {{"features": [...]}}')
        if len(features) != width:
            raise InferenceError(
                f"instance {number}: expected {width} features, got {len(features)}"
            )
        # bool is an int subclass; true/false are not features.
        if not all(
            isinstance(value, int | float) and not isinstance(value, bool) for value in features
        ):
            raise InferenceError(f"instance {number}: every feature must be a number")
        rows.append(features)
    return rows


def _float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ModelFormatError(f"{name} must be a number, got {value!r}")
    return float(value)


def _floats(values: object, name: str) -> tuple[float, ...]:
    if not isinstance(values, list):
        raise ModelFormatError(f"{name} must be a list of numbers")
    return tuple(_float(value, name) for value in values)
