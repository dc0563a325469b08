"""The synthetic data generator, checked through what a user sees: the files it writes."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import ArrayLike

from citymodels_devkit.datagen import (
    FEATURE_NAMES,
    RAW_COLUMNS,
    REFERENCE_YEAR,
    CityTruth,
    city_names,
    generate,
    generate_city,
    load_ground_truth,
    true_price,
    write_dataset,
)

NOTEBOOK_CITIES = [
    "NewYork_NY",
    "LosAngeles_CA",
    "Chicago_IL",
    "Houston_TX",
    "Dallas_TX",
    "Phoenix_AZ",
    "Philadelphia_PA",
    "SanAntonio_TX",
    "SanDiego_CA",
    "SanFrancisco_CA",
]
CITY_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")  # design §3


def read_cells(path: Path) -> dict[str, np.ndarray]:
    """A headerless CSV's cells as text, by column name (as any CSV reader sees them)."""
    lines = path.read_text(encoding="ascii").splitlines()
    cells = np.array([line.split(",") for line in lines])
    assert cells.shape[1] == len(RAW_COLUMNS)
    return {name: cells[:, i] for i, name in enumerate(RAW_COLUMNS)}


def numbers(cells: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Numeric columns as floats, y/n as 1/0."""
    return {
        name: (values == "y").astype(float) if name in ("FRONT_PORCH", "DECK") else
        values.astype(float)
        for name, values in cells.items()
    }  # fmt: skip


def fit_truth(columns: dict[str, np.ndarray]) -> tuple[float, dict[str, float]]:
    """Least-squares intercept and effects, with YEAR_BUILT counted from the reference year."""
    x = np.column_stack(
        [np.ones(len(columns["PRICE"]))]
        + [
            columns[name] - (REFERENCE_YEAR if name == "YEAR_BUILT" else 0)
            for name in FEATURE_NAMES
        ]
    )
    solution, *_ = np.linalg.lstsq(x, columns["PRICE"], rcond=None)
    return float(solution[0]), dict(zip(FEATURE_NAMES, solution[1:].tolist(), strict=True))


def test_the_notebooks_ten_cities_come_first_in_its_order() -> None:
    assert city_names(10) == NOTEBOOK_CITIES
    assert city_names(3) == NOTEBOOK_CITIES[:3]
    assert city_names(0) == []


def test_names_for_10000_cities_are_valid_unique_and_prefix_stable() -> None:
    names = city_names(10_000)

    assert len(set(names)) == 10_000
    assert all(CITY_ID.fullmatch(name) for name in names), [
        n for n in names if not CITY_ID.fullmatch(n)
    ]
    assert names[:20] == city_names(20)
    assert names[10] == "Austin_TX"  # real cities follow the notebook's
    # once real names run out they repeat with a number: Austin_TX_2, ...
    assert re.fullmatch(r".+_\d+", names[-1])
    assert names[-1].rsplit("_", 1)[0] in names[:200]


def test_same_arguments_write_byte_identical_files_and_another_seed_does_not(
    tmp_path: Path,
) -> None:
    for name, seed in [("a", 7), ("b", 7), ("c", 8)]:
        write_dataset(tmp_path / name, 3, 60, seed=seed, noise=10_000)

    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted([*(f"{c}.csv" for c in NOTEBOOK_CITIES[:3]), "ground_truth.json"])
    for file in files:
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    first = f"{NOTEBOOK_CITIES[0]}.csv"
    assert (tmp_path / "a" / first).read_bytes() != (tmp_path / "c" / first).read_bytes()


def test_a_city_does_not_depend_on_how_many_cities_are_generated(tmp_path: Path) -> None:
    # 12 cities reach past the notebook's ten, into cities with drawn effects.
    small = write_dataset(tmp_path / "small", 12, 40, seed=3, noise=5_000)
    large = write_dataset(tmp_path / "large", 15, 40, seed=3, noise=5_000)

    assert large.cities[:12] == small.cities
    for small_csv, large_csv in zip(small.csv_paths, large.csv_paths, strict=False):
        assert small_csv.read_bytes() == large_csv.read_bytes()
    small_truth = load_ground_truth(tmp_path / "small")
    large_truth = load_ground_truth(tmp_path / "large")
    assert all(small_truth[city] == large_truth[city] for city in small.cities)


def test_more_rows_do_not_change_a_citys_price_effects() -> None:
    _, few = generate_city("Boise_ID", 10, seed=1, noise=0, index=97)
    _, many = generate_city("Boise_ID", 500, seed=1, noise=0, index=97)

    assert (few.intercept, few.coefficients) == (many.intercept, many.coefficients)


def test_values_stay_physical_and_prices_positive_even_with_huge_noise(
    tmp_path: Path,
) -> None:
    # A sigma of 1,000,000 is larger than most prices: many rows would go negative.
    summary = write_dataset(tmp_path, 12, 1_500, seed=11, noise=1_000_000)

    for path in summary.csv_paths:
        columns = numbers(read_cells(path))
        assert columns["YEAR_BUILT"].max() <= REFERENCE_YEAR
        assert columns["YEAR_BUILT"].min() > 1900
        assert columns["SQUARE_FEET"].min() >= 400
        assert columns["LOT_ACRES"].min() >= 0.05
        assert set(columns["NUM_BEDROOMS"]) <= {2, 3, 4, 5, 6}
        assert set(columns["NUM_BATHROOMS"]) <= {1.0, 1.5, 2.0, 2.5, 3.0}
        assert set(columns["GARAGE_SPACES"]) <= {0, 1, 2, 3}
        price = columns["PRICE"]
        assert price.min() >= 1
        # Redrawn, not clipped: no pile of rows on the lowest price or on 2019.
        assert np.mean(price == price.min()) < 0.01
        assert np.mean(columns["YEAR_BUILT"] == REFERENCE_YEAR) < 0.01


def test_numbers_are_written_as_documented(tmp_path: Path) -> None:
    summary = write_dataset(tmp_path, 2, 300, seed=5, noise=10_000)
    formats = {
        "YEAR_BUILT": r"\d{4}",
        "SQUARE_FEET": r"[1-9]\d*\.\d",
        "NUM_BEDROOMS": r"[2-6]",
        "NUM_BATHROOMS": r"[1-3]\.[05]",
        "LOT_ACRES": r"\d+\.\d\d",
        "GARAGE_SPACES": r"[0-3]",
        "FRONT_PORCH": r"[yn]",
        "DECK": r"[yn]",
        "PRICE": r"[1-9]\d*",
    }

    for path in summary.csv_paths:
        cells = read_cells(path)
        for name, pattern in formats.items():
            bad = [v for v in cells[name] if not re.fullmatch(pattern, v)]
            assert not bad, (path.name, name, bad[:5])
        # Both answers occur: the y/n columns are not constant.
        assert set(cells["DECK"]) == {"y", "n"}
        assert set(cells["FRONT_PORCH"]) == {"y", "n"}


def test_headerless_by_default_header_row_on_request(tmp_path: Path) -> None:
    plain = write_dataset(tmp_path / "plain", 1, 50, seed=2, noise=1_000)
    headed = write_dataset(tmp_path / "headed", 1, 50, seed=2, noise=1_000, header=True)

    plain_lines = plain.csv_paths[0].read_text().splitlines()
    headed_lines = headed.csv_paths[0].read_text().splitlines()
    assert len(plain_lines) == 50
    assert float(plain_lines[0].split(",")[0]) <= REFERENCE_YEAR  # data from line 1
    assert headed_lines[0] == ",".join(RAW_COLUMNS)
    assert headed_lines[1:] == plain_lines


@pytest.mark.parametrize(("city", "index"), [("NewYork_NY", 0), ("Omaha_NE", 39)])
def test_written_prices_are_the_truth_formula_and_a_deck_counts(
    tmp_path: Path, city: str, index: int
) -> None:
    # GIVEN noiseless data written to CSV, and the truth written beside it
    table, generated_truth = generate_city(city, 2_000, seed=9, noise=0, index=index)
    path = tmp_path / f"{city}.csv"
    path.write_bytes(table.to_csv_bytes())
    truth = CityTruth.from_json(json.loads(json.dumps(generated_truth.to_json())))

    # WHEN a least-squares fit reads only the CSV
    intercept, effects = fit_truth(numbers(read_cells(path)))

    # THEN it finds the truth (prices are only rounded to whole dollars), deck included
    # (the notebook's gen_price ignored DECK)
    assert truth.coefficients["DECK"] > 1_000
    assert intercept == pytest.approx(truth.intercept, abs=1.0)
    for name in FEATURE_NAMES:
        assert effects[name] == pytest.approx(truth.coefficients[name], abs=0.1), name
    # also when YEAR_BUILT is fitted as is (what a model trained on raw columns sees)
    raw = numbers(read_cells(path))
    x = np.column_stack([np.ones(len(raw["PRICE"]))] + [raw[name] for name in FEATURE_NAMES])
    raw_solution, *_ = np.linalg.lstsq(x, raw["PRICE"], rcond=None)
    assert raw_solution[0] == pytest.approx(truth.raw_intercept, rel=1e-6)
    # and the truth's own formula reproduces every written price to the dollar
    parsed = read_cells(path)
    assert np.abs(true_price(truth, parsed) - parsed["PRICE"].astype(float)).max() <= 0.5


def test_a_deck_adds_its_effect_to_the_true_price() -> None:
    truth = next(iter(generate(1, 1, seed=0, noise=0)))[2]
    house: dict[str, ArrayLike] = {
        "YEAR_BUILT": [2000, 2000],
        "SQUARE_FEET": [2500.0, 2500.0],
        "NUM_BEDROOMS": [3, 3],
        "NUM_BATHROOMS": [2.0, 2.0],
        "LOT_ACRES": [0.5, 0.5],
        "GARAGE_SPACES": [1, 1],
        "FRONT_PORCH": ["n", "N"],
        "DECK": ["Y", "n"],
    }

    with_deck, without_deck = true_price(truth, house)

    assert with_deck - without_deck == pytest.approx(truth.coefficients["DECK"])
    with pytest.raises(ValueError, match="DECK"):
        true_price(truth, {**house, "DECK": ["yes", "n"]})


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_a_square_foot_costs_more_in_new_york_than_in_houston(tmp_path: Path, seed: int) -> None:
    write_dataset(tmp_path, 10, 1, seed=seed, noise=0)
    truth = load_ground_truth(tmp_path)

    sqft = {city: t.coefficients["SQUARE_FEET"] for city, t in truth.items()}
    assert sqft["NewYork_NY"] > 1.5 * sqft["Houston_TX"]
    assert sqft["SanFrancisco_CA"] > sqft["SanAntonio_TX"]


def test_cities_past_the_notebooks_have_their_own_effects() -> None:
    truths = [truth for _, _, truth in generate(30, 1, seed=4, noise=0)][10:]

    per_sqft = {t.coefficients["SQUARE_FEET"] for t in truths}
    assert len(per_sqft) == len(truths)
    assert all(t.intercept > 0 and min(t.coefficients.values()) > 0 for t in truths)


def test_ground_truth_json_round_trips(tmp_path: Path) -> None:
    generated = {city: truth for city, _, truth in generate(12, 30, seed=6, noise=2_500)}
    summary = write_dataset(tmp_path, 12, 30, seed=6, noise=2_500)

    document = json.loads(summary.ground_truth_path.read_text())
    assert (document["seed"], document["noise"], document["rows"]) == (6, 2_500.0, 30)
    assert list(document["cities"]) == list(generated)
    assert load_ground_truth(tmp_path) == generated
    assert load_ground_truth(summary.ground_truth_path) == generated
    truth = generated["Chicago_IL"]
    assert CityTruth.from_json(json.dumps(truth.to_json())) == truth
    assert truth.mae_floor == pytest.approx(2_500 * math.sqrt(2 / math.pi))
    assert document["cities"]["Chicago_IL"]["mae_floor"] == pytest.approx(truth.mae_floor)


def test_noise_has_the_requested_sigma() -> None:
    noisy, truth = generate_city("Dallas_TX", 20_000, seed=8, noise=10_000, index=4)
    clean, clean_truth = generate_city("Dallas_TX", 500, seed=8, noise=0, index=4)

    residual = noisy.price - true_price(truth, noisy)
    assert residual.std() == pytest.approx(10_000, rel=0.03)
    assert abs(residual.mean()) < 300
    assert np.mean(np.abs(residual)) == pytest.approx(truth.mae_floor, rel=0.03)
    assert np.abs(clean.price - true_price(clean_truth, clean)).max() <= 0.5


def test_progress_is_reported_after_each_city(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []

    write_dataset(tmp_path, 4, 5, seed=0, noise=0, progress=lambda d, t: calls.append((d, t)))

    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"city": "../etc"}, "city id .* must start with a letter"),
        ({"noise": -1.0}, "noise"),
        ({"noise": math.inf}, "noise"),
        ({"rows": 0}, "rows"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(
    kwargs: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {"city": "Chicago_IL", "rows": 5, "seed": 0, "noise": 0.0}
    arguments.update(kwargs)

    with pytest.raises(ValueError, match=message):
        generate_city(**arguments, index=2)  # type: ignore[arg-type]
