"""Benchmark: accuracy of the project's training path on generated data (JSON on stdout).

Generated cities (σ = 5,000) → the processing job's code → the local Linear Learner
with the notebook's hyperparameters. Reports the mean per-city test MAE as a ratio to
the exact least-absolute-deviation fit (1,000 rows per city) and to the noise floor
σ·√(2/π) (5,000 rows per city). Targets: ≤ 1.02 and ≤ 1.05.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path

from citymodels_devkit.inprocess import accuracy_study


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="cm-bench-acc-") as tmp:
        started = time.perf_counter()
        small = accuracy_study(
            Path(tmp) / "small", cities=20, rows=1_000, seed=11, noise=5_000.0, with_lad=True
        )
        large = accuracy_study(
            Path(tmp) / "large", cities=20, rows=5_000, seed=11, noise=5_000.0, with_lad=False
        )
        elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {
                "benchmark": "accuracy",
                "machine": f"{platform.machine()}, {platform.python_version()}",
                "noise_sigma": 5_000.0,
                "cities": 20,
                "rows_1000": {
                    "mean_mae": small.mean_mae,
                    "ratio_to_exact_l1_fit": small.ratio_to_lad,
                    "target": 1.02,
                },
                "rows_5000": {
                    "mean_mae": large.mean_mae,
                    "noise_floor": large.noise_floor,
                    "ratio_to_noise_floor": large.ratio_to_noise_floor,
                    "target": 1.05,
                },
                "seconds": elapsed,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
