"""Shared fixtures: small, valid raw uploads built in code (no network, no files)."""

from __future__ import annotations

import random

import pytest

from citymodels.schema import COLUMNS

HEADER = ",".join(COLUMNS)


def raw_rows(n: int = 60, seed: int = 1) -> list[str]:
    """Return ``n`` valid headerless raw CSV lines (the notebook's format)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        year = rng.randint(1960, 2019)
        sqft = round(rng.gauss(3000, 600), 1)
        porch, deck = rng.choice("yn"), rng.choice("yn")
        price = 150 * sqft - 5000 * (2019 - year) + 250_000 + (10_000 if deck == "y" else 0)
        lines.append(
            f"{year},{sqft},{rng.randint(2, 6)},{rng.randint(2, 6) / 2},"
            f"{round(rng.uniform(0.5, 1.5), 2)},{rng.randint(0, 3)},{porch},{deck},{round(price)}"
        )
    return lines


def upload(lines: list[str], *, header: bool = False, newline: str = "\n") -> bytes:
    """Join lines into an upload's bytes."""
    body = ([HEADER] if header else []) + lines
    return (newline.join(body) + newline).encode("utf-8")


@pytest.fixture
def valid_upload() -> bytes:
    """A valid 60-row headerless upload."""
    return upload(raw_rows(60))
