"""The per-city pipeline run in-process: process an upload, train, evaluate.

This is the same code the SageMaker jobs run — ``preprocessing/preprocess.py`` for the
processing job, the local Linear Learner for the training job, and the inference
pipeline (``preprocessing/inference.py`` then the model) for predictions — called
directly, without S3 or the job APIs. The accuracy tests and benchmarks use it, so
they measure exactly what the jobs produce.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from citymodels.schema import FEATURES
from citymodels_devkit.linear_learner import LinearLearnerModel, load_model, train
from citymodels_devkit.paths import load_container_module

NOTEBOOK_HYPERPARAMETERS: Mapping[str, str] = {
    "feature_dim": "10",
    "mini_batch_size": "100",
    "predictor_type": "regressor",
    "epochs": "10",
    "num_models": "32",
    "loss": "absolute_loss",
}
"""The notebook's Linear Learner hyperparameters (section 3), our defaults."""

SPLIT_CHANNELS = ("train", "validation", "test")


@dataclass(frozen=True)
class CityRun:
    """What processing and training one city's upload produced."""

    city: str
    run: str
    processed_dir: Path
    model_path: Path
    metrics: dict[str, float]
    rows: int
    process_seconds: float
    train_seconds: float


def process_upload(csv_path: Path, out_dir: Path, run: str) -> dict[str, Any]:
    """Run the processing job's code on one upload; return its summary.

    Raises
    ------
    ValueError
        The upload is invalid (the message is the processing job's ExitMessage).
    """
    preprocess = load_container_module("preprocess")
    try:
        return dict(preprocess.process(csv_path, out_dir, run))
    except preprocess.PreprocessError as err:
        raise ValueError(str(err)) from err


def train_processed(
    processed_dir: Path,
    model_dir: Path,
    hyperparameters: Mapping[str, str] = NOTEBOOK_HYPERPARAMETERS,
    *,
    seed: int = 0,
) -> tuple[Path, dict[str, float]]:
    """Train the local Linear Learner on a processed run's channels."""
    channels = {name: processed_dir / name for name in SPLIT_CHANNELS}
    result = train(channels, hyperparameters, model_dir, seed=seed)
    return result.model_path, result.metrics


def run_city(
    city: str,
    csv_path: Path,
    work_dir: Path,
    run: str,
    hyperparameters: Mapping[str, str] = NOTEBOOK_HYPERPARAMETERS,
) -> CityRun:
    """Process and train one city's upload under ``work_dir/{city}/{run}``."""
    base = work_dir / city / run
    started = time.perf_counter()
    summary = process_upload(csv_path, base / "processed", run)
    processed = time.perf_counter()
    model_path, metrics = train_processed(base / "processed", base / "model", hyperparameters)
    trained = time.perf_counter()
    return CityRun(
        city=city,
        run=run,
        processed_dir=base / "processed",
        model_path=model_path,
        metrics=metrics,
        rows=int(summary["rows"]),
        process_seconds=processed - started,
        train_seconds=trained - processed,
    )


class InferencePipeline:
    """The inference pipeline of one city: the preprocessor container, then the model.

    ``predict`` takes raw rows (CSV text without PRICE, or JSON ``{"instances": ...}``)
    exactly as the endpoint does, and returns prices.
    """

    def __init__(self, model: LinearLearnerModel | Path) -> None:
        self._inference = load_container_module("inference")
        self._preprocessor = self._inference.model_fn("")
        self.model = load_model(model) if isinstance(model, Path) else model

    def predict_body(self, body: bytes, content_type: str) -> list[float]:
        """Return the predicted prices for a request body."""
        rows = self._inference.input_fn(body, content_type)
        encoded = self._inference.predict_fn(rows, self._preprocessor)
        features, features_type = self._inference.output_fn(encoded, "text/csv")
        answer, _ = self.model.invoke(features.encode(), features_type, "application/json")
        return [float(p["score"]) for p in json.loads(answer)["predictions"]]

    def predict_raw(self, rows: Sequence[Sequence[object]]) -> list[float]:
        """Return predicted prices for raw feature rows (eight values each, PRICE excluded)."""
        body = "\n".join(",".join(str(v) for v in row[: len(FEATURES)]) for row in rows)
        return self.predict_body(body.encode(), "text/csv")


def read_raw_test(processed_dir: Path) -> tuple[list[list[str]], list[float]]:
    """Return a processed run's raw test rows (features as text) and their prices."""
    lines = (processed_dir / "test-raw" / "test-raw.csv").read_text().splitlines()
    rows = [line.split(",") for line in lines if line]
    return [r[: len(FEATURES)] for r in rows], [float(r[len(FEATURES)]) for r in rows]


def mean_absolute_error(predicted: Sequence[float], actual: Sequence[float]) -> float:
    """Return the mean absolute error of two equally long sequences."""
    if len(predicted) != len(actual) or not actual:
        raise ValueError("predicted and actual must be non-empty and of equal length")
    return sum(abs(p - a) for p, a in zip(predicted, actual, strict=True)) / len(actual)


@dataclass(frozen=True)
class AccuracyStudy:
    """Per-city test MAE of the pipeline, with references on the same test rows."""

    cities: tuple[str, ...]
    mae: tuple[float, ...]
    lad_mae: tuple[float, ...] | None
    noise_floor: float

    @property
    def mean_mae(self) -> float:
        """Mean per-city test MAE."""
        return sum(self.mae) / len(self.mae)

    @property
    def ratio_to_lad(self) -> float | None:
        """Mean MAE over the exact L1 (least absolute deviation) fit's mean MAE."""
        if self.lad_mae is None:
            return None
        return self.mean_mae / (sum(self.lad_mae) / len(self.lad_mae))

    @property
    def ratio_to_noise_floor(self) -> float:
        """Mean MAE over σ·√(2/π), the best expected MAE of any model."""
        return self.mean_mae / self.noise_floor


def accuracy_study(
    work_dir: Path, *, cities: int, rows: int, seed: int, noise: float, with_lad: bool
) -> AccuracyStudy:
    """Generate cities, run each through processing and training, measure test MAE.

    With ``with_lad``, also fit the exact least-absolute-deviation model (scikit-learn's
    ``QuantileRegressor(quantile=0.5, alpha=0, solver="highs")``, a dev dependency) on the
    same training rows and score it on the same test rows.
    """
    import math

    import numpy as np

    from citymodels.versions import mint_version
    from citymodels_devkit.datagen import write_dataset

    summary = write_dataset(work_dir / "data", cities, rows, seed=seed, noise=noise)
    maes: list[float] = []
    lads: list[float] = []
    for i, (city, csv_path) in enumerate(zip(summary.cities, summary.csv_paths, strict=True)):
        run = mint_version("2026-11-25T00:00:00Z", f"{i + 1:X}")
        processed = work_dir / city / "processed"
        process_upload(csv_path, processed, run)
        model_path, _ = train_processed(processed, work_dir / city / "model")
        test = np.loadtxt(processed / "test" / "test.csv", delimiter=",", ndmin=2)
        model = load_model(model_path)
        predicted = np.array(model.predict(test[:, 1:].tolist()))
        maes.append(float(np.mean(np.abs(predicted - test[:, 0]))))
        if with_lad:
            from sklearn.linear_model import QuantileRegressor

            train_rows = np.loadtxt(processed / "train" / "train.csv", delimiter=",", ndmin=2)
            lad = QuantileRegressor(quantile=0.5, alpha=0.0, solver="highs")
            lad.fit(train_rows[:, 1:], train_rows[:, 0])
            lads.append(float(np.mean(np.abs(lad.predict(test[:, 1:]) - test[:, 0]))))
    return AccuracyStudy(
        cities=summary.cities,
        mae=tuple(maes),
        lad_mae=tuple(lads) if with_lad else None,
        noise_floor=noise * math.sqrt(2 / math.pi),
    )
