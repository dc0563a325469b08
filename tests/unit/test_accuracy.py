"""Accuracy of the whole training path on generated data (the issue's targets).

The path is exactly what the jobs run: generated raw CSVs → the processing job's code
(validation, the seeded split, the one-hot transform) → the local Linear Learner with
the notebook's hyperparameters → predictions on the held-out test rows
(:func:`citymodels_devkit.inprocess.accuracy_study`; ``bench/bench_accuracy.py`` prints
the same figures as JSON).

Targets, with Gaussian noise σ = 5,000 and over 20 cities:
- mean per-city test MAE ≤ 1.02 × that of the exact least-absolute-deviation fit on
  the same training rows, evaluated on the same test rows;
- with 5,000 rows per city, mean test MAE ≤ 1.05 × the noise floor σ·√(2/π).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from citymodels_devkit.inprocess import accuracy_study


@pytest.mark.slow
def test_mean_test_mae_is_within_2_percent_of_the_exact_l1_fit(tmp_path: Path) -> None:
    # GIVEN 20 generated cities of 1,000 rows with σ = 5,000 noise
    # WHEN each is processed and trained with the notebook's hyperparameters
    study = accuracy_study(tmp_path, cities=20, rows=1_000, seed=11, noise=5_000.0, with_lad=True)
    # THEN on the same test rows, the mean MAE is at most 1.02 × the exact L1 fit's
    assert study.ratio_to_lad is not None
    assert study.ratio_to_lad <= 1.02, f"ratio to the exact L1 fit: {study.ratio_to_lad:.4f}"


@pytest.mark.slow
def test_with_5000_rows_the_error_reaches_the_noise_floor(tmp_path: Path) -> None:
    # GIVEN 20 cities of 5,000 rows WHEN trained THEN the mean test MAE is within 5 % of
    # the best any model can expect, σ·√(2/π)
    study = accuracy_study(tmp_path, cities=20, rows=5_000, seed=11, noise=5_000.0, with_lad=False)
    assert study.ratio_to_noise_floor <= 1.05, f"ratio: {study.ratio_to_noise_floor:.4f}"
