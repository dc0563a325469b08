"""The quality gate (docs/design.md §3): is a newly trained model good enough to serve?

The ``publish`` function runs it after copying the candidate to its ``mme/`` key. The
candidate is called *through the endpoint*, on the run's raw test rows
(``processed/{city}/{run}/test-raw/test-raw.csv``, written by the processing job), so
the gate measures exactly what clients will get (preprocessor container included)
and the first call loads the model on the endpoint (warms it). It passes when

- the candidate's test MAE is below the MAE of predicting the training median (a model
  must beat the trivial one; the median comes from the labels of
  ``processed/{city}/{run}/train/train.csv``), and
- when the city already serves a model, the candidate's MAE is at most
  (1 + tolerance) × that model's MAE on the same rows.

A current model that fails on the endpoint (its container errors or its artifact is
gone) is recorded in the result and not compared against: a broken model must not
block its replacement. A candidate that fails on the endpoint does not pass.

Everything streams: the files are read line by line and the test rows are sent in
chunks of at most 1,000, so memory does not grow with the upload. Standard library and
boto3 only (this runs in Lambda: no pandas, no numpy).
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from citymodels import layout
from citymodels.endpoint import MAX_ROWS_PER_CALL, EndpointClient, ModelFailed, ModelMissing
from citymodels.errors import CityModelsError
from citymodels.schema import FEATURES

_READ_CHUNK = 256 * 1024


class GateDataError(CityModelsError):
    """The processing job's output needed by the gate is missing or malformed."""

    code = "gate_data_error"


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict with every number it was based on.

    Attributes
    ----------
    city, version
        The candidate.
    passed
        Whether the candidate may be published.
    reason
        One sentence for a person, with the numbers.
    rows
        Test rows the MAEs are computed on.
    tolerance
        The configured tolerance (``GATE_TOLERANCE``).
    candidate_mae
        The candidate's MAE through the endpoint (None if it failed there).
    training_median, median_mae
        The training labels' median and the MAE of predicting it on the test rows.
    current_version, current_mae
        The model the city serves (None for a city's first model) and its MAE on the
        same rows (None when there is none or it failed).
    threshold
        ``(1 + tolerance) × current_mae`` when compared against a current model.
    candidate_error, current_error
        Why the candidate or the current model could not be evaluated, if so.
    report_key
        Where the result was written (``reports/{city}/{run}/gate.json``).
    """

    city: str
    version: str
    passed: bool
    reason: str
    rows: int
    tolerance: float
    candidate_mae: float | None
    training_median: float
    median_mae: float
    current_version: str | None = None
    current_mae: float | None = None
    threshold: float | None = None
    candidate_error: str | None = None
    current_error: str | None = None
    report_key: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the result as written to ``gate.json`` and the run's ``gate``."""
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """Return the gate's numbers as run metrics (``gate:candidate_mae``...)."""
        values = {
            "gate:candidate_mae": self.candidate_mae,
            "gate:median_mae": self.median_mae,
            "gate:current_mae": self.current_mae,
        }
        return {name: value for name, value in values.items() if value is not None}


def run_gate(
    *,
    s3: Any,
    endpoint: EndpointClient,
    bucket: str,
    city: str,
    version: str,
    current_version: str | None,
    tolerance: float,
    deadline_seconds: float = 60.0,
) -> GateResult:
    """Evaluate a candidate against the current model and the median baseline.

    Parameters
    ----------
    s3
        A boto3 S3 client.
    endpoint
        The multi-model endpoint.
    bucket
        The DataBucket.
    city, version
        The candidate (already copied to ``mme/{city}/{version}.tar.gz``).
    current_version
        The version the city serves, or None for its first model.
    tolerance
        How much worse than the current model the candidate may be (0.05: 5 %).
    deadline_seconds
        How long one endpoint call may wait for a model still loading.

    Returns
    -------
    GateResult
        Also written to ``reports/{city}/{version}/gate.json``.

    Raises
    ------
    GateDataError
        The processing job's train or test-raw output is missing or malformed.
    ModelNotReady, ModelMissing, EndpointRejected
        The endpoint could not evaluate the candidate (transient or a deployment
        problem, not a verdict on the model).
    """
    median = _median(_train_labels(s3, bucket, city, version))
    candidate_model = layout.target_model(city, version)
    current_model = layout.target_model(city, current_version) if current_version else None
    rows = 0
    median_error = candidate_error_sum = current_error_sum = 0.0
    candidate_error: str | None = None
    current_error: str | None = None
    for features, prices in _test_chunks(s3, bucket, city, version):
        rows += len(prices)
        median_error += sum(abs(median - price) for price in prices)
        if candidate_error is None:
            try:
                predicted = _predict(endpoint, candidate_model, features, deadline_seconds)
            except ModelFailed as err:
                candidate_error = err.message
            else:
                candidate_error_sum += _absolute_error(predicted, prices)
        if current_model is not None and current_error is None:
            try:
                predicted = _predict(endpoint, current_model, features, deadline_seconds)
            except (ModelFailed, ModelMissing) as err:
                current_error = err.message
            else:
                current_error_sum += _absolute_error(predicted, prices)
    if rows == 0:
        raise GateDataError(
            f"no test rows in {layout.processed_key(city, version, 'test-raw')}", field="test-raw"
        )
    result = _verdict(
        city=city,
        version=version,
        rows=rows,
        tolerance=tolerance,
        training_median=median,
        median_mae=median_error / rows,
        candidate_mae=None if candidate_error else candidate_error_sum / rows,
        candidate_error=candidate_error,
        current_version=current_version,
        current_mae=(
            current_error_sum / rows if current_model is not None and not current_error else None
        ),
        current_error=current_error,
        report_key=layout.report_key(city, version, "gate"),
    )
    s3.put_object(
        Bucket=bucket,
        Key=result.report_key,
        Body=json.dumps(result.to_dict(), indent=2).encode("utf-8"),
        ContentType="application/json",
    )
    return result


def _verdict(
    *,
    city: str,
    version: str,
    rows: int,
    tolerance: float,
    training_median: float,
    median_mae: float,
    candidate_mae: float | None,
    candidate_error: str | None,
    current_version: str | None,
    current_mae: float | None,
    current_error: str | None,
    report_key: str,
) -> GateResult:
    threshold = (1 + tolerance) * current_mae if current_mae is not None else None
    if candidate_mae is None:
        passed = False
        reason = f"the candidate failed on the endpoint: {candidate_error}"
    elif not candidate_mae < median_mae:
        passed = False
        reason = (
            f"test MAE {candidate_mae:,.2f} is not below {median_mae:,.2f}, the MAE of "
            f"predicting the training median ({training_median:,.2f}) on the same "
            f"{rows} rows"
        )
    elif threshold is not None and candidate_mae > threshold:
        passed = False
        reason = (
            f"test MAE {candidate_mae:,.2f} is worse than current version "
            f"{current_version}'s {current_mae:,.2f} by more than the tolerance "
            f"{_percent(tolerance)} (at most {threshold:,.2f}) on the same {rows} rows"
        )
    else:
        passed = True
        compared = (
            f" and within {_percent(tolerance)} of current version {current_version}'s "
            f"{current_mae:,.2f}"
            if current_mae is not None
            else ""
        )
        skipped = (
            f" (current version {current_version} not compared: {current_error})"
            if current_error
            else ""
        )
        reason = (
            f"test MAE {candidate_mae:,.2f} on {rows} rows is below {median_mae:,.2f} (always "
            f"predicting the training median, {training_median:,.2f}){compared}{skipped}"
        )
    return GateResult(
        city=city,
        version=version,
        passed=passed,
        reason=reason,
        rows=rows,
        tolerance=tolerance,
        candidate_mae=candidate_mae,
        training_median=training_median,
        median_mae=median_mae,
        current_version=current_version,
        current_mae=current_mae,
        threshold=threshold,
        candidate_error=candidate_error,
        current_error=current_error,
        report_key=report_key,
    )


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"  # 0.05 -> "5%", 0.025 -> "2.5%"


def _predict(
    endpoint: EndpointClient,
    target_model: str,
    features: Sequence[Sequence[str]],
    deadline_seconds: float,
) -> list[float]:
    predicted = endpoint.predict_rows(target_model, features, deadline_seconds=deadline_seconds)
    if len(predicted) != len(features):
        raise ModelFailed(
            f"model {target_model} answered {len(predicted)} predictions for {len(features)} rows"
        )
    return predicted


def _absolute_error(predicted: Sequence[float], actual: Sequence[float]) -> float:
    return sum(abs(p - a) for p, a in zip(predicted, actual))


def _lines(s3: Any, bucket: str, key: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, text)`` of an S3 object's non-blank lines, streaming."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    except s3.exceptions.NoSuchKey as err:
        raise GateDataError(
            f"s3://{bucket}/{key} does not exist (did the processing job write it?)",
            field="key",
        ) from err
    try:
        for number, raw in enumerate(body.iter_lines(chunk_size=_READ_CHUNK), start=1):
            text = raw.decode("utf-8").strip()
            if text:
                yield number, text
    finally:
        body.close()


def _train_labels(s3: Any, bucket: str, city: str, version: str) -> array[float]:
    key = layout.processed_key(city, version, "train")
    # array('d') holds a float in 8 bytes (a list of floats takes ~4x that): the labels
    # of a 100 MB upload fit easily in a small Lambda.
    labels: array[float] = array("d")
    for number, text in _lines(s3, bucket, key):
        try:
            labels.append(float(text.split(",", 1)[0]))
        except ValueError as err:
            raise GateDataError(f"{key} line {number}: the label is not a number") from err
    if not labels:
        raise GateDataError(f"{key} has no rows", field="train")
    return labels


def _median(values: array[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def _test_chunks(
    s3: Any, bucket: str, city: str, version: str
) -> Iterator[tuple[list[list[str]], list[float]]]:
    """Yield the raw test rows in chunks: (feature rows as text, prices)."""
    key = layout.processed_key(city, version, "test-raw")
    features: list[list[str]] = []
    prices: list[float] = []
    for number, text in _lines(s3, bucket, key):
        fields = text.split(",")
        if len(fields) != len(FEATURES) + 1:
            raise GateDataError(
                f"{key} line {number}: expected {len(FEATURES) + 1} fields, found {len(fields)}"
            )
        try:
            prices.append(float(fields[-1]))
        except ValueError as err:
            raise GateDataError(f"{key} line {number}: the price is not a number") from err
        # The rows go to the endpoint as written: the preprocessor container parses them.
        features.append(fields[:-1])
        if len(features) == MAX_ROWS_PER_CALL:
            yield features, prices
            features, prices = [], []
    if features:
        yield features, prices
