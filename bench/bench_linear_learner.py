"""Benchmark the local Linear Learner: training time for one city, and its accuracy.

Prints one JSON object to stdout:

- ``train_ms``: ``train()`` end to end for one city of 1,000 notebook houses (630 train,
  270 validation, 100 test rows, CSV channels on disk): read, fit, metrics, artifact;
- ``fit_ms``: the same training on arrays (no CSV, no artifact);
- ``predict_one_row_us`` / ``invoke_csv_one_row_us``: the inference hot path;
- ``accuracy``: mean test MAE over cities relative to the exact least-absolute-deviation
  fit (scikit-learn ``QuantileRegressor``) on the same split, and, at 5,000 rows per
  city, relative to the noise floor ``sigma * sqrt(2 / pi)``.

Timings are medians and 90th percentiles over ``--runs`` repetitions after warm-up.
Run: ``python bench/bench_linear_learner.py [--runs 30] [--cities 20]``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from citymodels_devkit.linear_learner import evaluate, fit, load_model, train

HYPERPARAMETERS = {
    "feature_dim": "10",
    "predictor_type": "regressor",
    "loss": "absolute_loss",
    "epochs": "10",
    "num_models": "32",
    "mini_batch_size": "100",
}
SIGMA = 5_000.0
ROW = [2005.0, 2500.0, 3.0, 2.0, 1.1, 2.0, 1.0, 0.0, 0.0, 1.0]


def house_city(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The notebook's houses, one-hot encoded (10 features), effects varied ±30% per city."""
    effects = np.array([150, 10_000, 15_000, 15_000, 10_000, 10_000, 15_000, 5_000.0])
    effects *= rng.uniform(0.7, 1.3, size=effects.size)
    year = np.minimum(2019, rng.normal(1995, 10, rows).astype(int)).astype(float)
    sqft = rng.normal(3000, 750, rows)
    beds = rng.integers(2, 7, rows).astype(float)
    baths = rng.integers(2, 7, rows) / 2
    lot = np.round(rng.normal(1.0, 0.25, rows), 2)
    garage = rng.integers(0, 4, rows).astype(float)
    porch = rng.integers(0, 2, rows).astype(float)
    deck = rng.integers(0, 2, rows).astype(float)
    price = (
        effects[0] * sqft
        + effects[1] * beds
        + effects[2] * baths
        + effects[3] * lot
        + effects[4] * deck
        + effects[5] * porch
        + effects[6] * garage
        - effects[7] * (2019 - year)
        + rng.uniform(50_000, 150_000)
        + rng.normal(0, SIGMA, rows)
    )
    x = np.column_stack([year, sqft, beds, baths, lot, garage, porch, 1 - porch, deck, 1 - deck])
    return x, price


def notebook_split(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """10% test, then 30% of the rest validation."""
    order = rng.permutation(len(y))
    n_test = round(0.1 * len(y))
    n_val = round(0.3 * (len(y) - n_test))
    test, val, tr = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return {"train": (x[tr], y[tr]), "validation": (x[val], y[val]), "test": (x[test], y[test])}


def timings(action: Callable[[], object], runs: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        action()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return {
        "median": statistics.median(samples),
        "p90": samples[min(len(samples) - 1, math.ceil(0.9 * len(samples)) - 1)],
        "min": samples[0],
    }


def accuracy(cities: int) -> dict[str, float]:
    from sklearn.linear_model import QuantileRegressor

    rng = np.random.default_rng(7)
    ours, exact = [], []
    for index in range(cities):
        parts = notebook_split(rng, *house_city(rng, 1000))
        (x, y), (xv, yv), (xt, yt) = parts["train"], parts["validation"], parts["test"]
        model, _ = fit(x, y, xv, yv, HYPERPARAMETERS, seed=index)
        lad = QuantileRegressor(quantile=0.5, alpha=0, solver="highs").fit(x, y)
        ours.append(evaluate(model, xt, yt)["absolute_loss"])
        exact.append(float(np.mean(np.abs(lad.predict(xt) - yt))))
    large = []
    for index in range(cities):
        parts = notebook_split(rng, *house_city(rng, 5000))
        (x, y), (xv, yv), (xt, yt) = parts["train"], parts["validation"], parts["test"]
        model, _ = fit(x, y, xv, yv, HYPERPARAMETERS, seed=index)
        large.append(evaluate(model, xt, yt)["absolute_loss"])
    floor = SIGMA * math.sqrt(2 / math.pi)
    return {
        "cities": cities,
        "mae_1000_rows": float(np.mean(ours)),
        "mae_lad_1000_rows": float(np.mean(exact)),
        "ratio_to_lad_1000_rows": float(np.mean(ours) / np.mean(exact)),
        "mae_5000_rows": float(np.mean(large)),
        "ratio_to_noise_floor_5000_rows": float(np.mean(large) / floor),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed repetitions (default 30)")
    parser.add_argument("--cities", type=int, default=20, help="cities for accuracy (default 20)")
    args = parser.parse_args()

    rng = np.random.default_rng(1)
    parts = notebook_split(rng, *house_city(rng, 1000))
    (x, y), (xv, yv) = parts["train"], parts["validation"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        channels = {}
        for name, (features, labels) in parts.items():
            (root / name).mkdir()
            table = np.column_stack([labels, features])
            np.savetxt(root / name / f"{name}.csv", table, delimiter=",", fmt="%.10g")
            channels[name] = root / name
        train_time = timings(lambda: train(channels, HYPERPARAMETERS, root / "model"), args.runs)
        model = load_model(root / "model" / "model.tar.gz")
    fit_time = timings(lambda: fit(x, y, xv, yv, HYPERPARAMETERS, seed=0), args.runs)
    one_row = [ROW]
    body = ",".join(map(repr, ROW)).encode()
    predict_time = timings(lambda: [model.predict(one_row) for _ in range(1000)], args.runs)
    invoke_time = timings(
        lambda: [model.invoke(body, "text/csv", "application/json") for _ in range(1000)],
        args.runs,
    )
    result = {
        "benchmark": "linear_learner",
        "rows": {"train": len(y), "validation": len(yv), "test": len(parts["test"][1])},
        "hyperparameters": HYPERPARAMETERS,
        "runs": args.runs,
        "median_ms": train_time["median"] * 1e3,
        "p90_ms": train_time["p90"] * 1e3,
        "train_ms": {k: v * 1e3 for k, v in train_time.items()},
        "fit_ms": {k: v * 1e3 for k, v in fit_time.items()},
        "predict_one_row_us": {k: v * 1e3 for k, v in predict_time.items()},
        "invoke_csv_one_row_us": {k: v * 1e3 for k, v in invoke_time.items()},
        "accuracy": accuracy(args.cities) if args.cities > 0 else None,
    }
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
