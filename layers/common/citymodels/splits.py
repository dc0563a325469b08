"""The train/validation/test split (docs/design.md §3), seeded from the run.

As in the notebook: 10% of the rows are the test split, then 30% of the rest the
validation split. The shuffle is seeded from the run id, so the same upload always
splits the same way (an event delivered twice, or a job retried, sees identical
splits). Only the standard library is used: this runs in the processing job on the
container's Python and must give the same split there as on a laptop.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

TEST_FRACTION = 0.1
VALIDATION_FRACTION = 0.3


@dataclass(frozen=True)
class Split:
    """Row indices of each split, each in ascending (file) order."""

    train: tuple[int, ...]
    validation: tuple[int, ...]
    test: tuple[int, ...]


def split_sizes(rows: int) -> tuple[int, int, int]:
    """Return ``(train, validation, test)`` sizes for ``rows`` rows (half rounds up).

    >>> split_sizes(1000)
    (630, 270, 100)
    """
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    test = int(rows * TEST_FRACTION + 0.5)
    validation = int((rows - test) * VALIDATION_FRACTION + 0.5)
    return rows - test - validation, validation, test


def split_indices(rows: int, seed: str) -> Split:
    """Split ``range(rows)`` into train, validation and test, deterministically.

    Parameters
    ----------
    rows
        Number of data rows.
    seed
        The run id (any string): the same seed always gives the same split.
    """
    order = list(range(rows))
    # random.Random(int).shuffle is stable across CPython versions; hashing the seed
    # text keeps it independent of PYTHONHASHSEED.
    random.Random(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big")).shuffle(order)
    _, n_validation, n_test = split_sizes(rows)
    test = sorted(order[:n_test])
    validation = sorted(order[n_test : n_test + n_validation])
    train = sorted(order[n_test + n_validation :])
    return Split(train=tuple(train), validation=tuple(validation), test=tuple(test))
