"""Synthetic house-price data, one CSV per city (the notebook's section 1, done right).

Each city has a *ground truth*: a linear price formula with its own price effects,

    PRICE = intercept
            + c[SQUARE_FEET] * SQUARE_FEET + c[NUM_BEDROOMS] * NUM_BEDROOMS
            + c[NUM_BATHROOMS] * NUM_BATHROOMS + c[LOT_ACRES] * LOT_ACRES
            + c[GARAGE_SPACES] * GARAGE_SPACES
            + c[FRONT_PORCH] * [FRONT_PORCH == 'y'] + c[DECK] * [DECK == 'y']
            + c[YEAR_BUILT] * (YEAR_BUILT - reference_year)
            + N(0, noise_sigma)

rounded to whole dollars. ``c[YEAR_BUILT]`` is positive: a house one year newer is
worth that much more, i.e. the notebook's "-5000 per year of age". ``intercept`` is the
city's base price (a house with every other feature zero, built in the reference year).

The baseline effects are the notebook's (150 per square foot, 10,000 per bedroom, 15,000
per bathroom, per acre and per garage space, 10,000 for a front porch and for a deck,
5,000 per year of age) plus a base price of 100,000. The notebook's ``gen_price`` read
FRONT_PORCH where it meant the deck, so a deck never changed its prices; here it does.

Per-city effects, so that "a square foot moves prices more in New York than in Houston"
(the notebook's claim, which its data never made true):

- the notebook's ten cities have a fixed price level that scales every effect and the
  base price (``NOTEBOOK_CITY_LEVELS``), the same for every seed;
- every other city draws, from its own seeded stream, a log-normal price level around 1
  and a log-normal factor around 1 for each effect.

Effects are rounded to cents, so the truth written to ``ground_truth.json`` is exactly
the formula the prices were computed with.

Features follow the notebook's ``gen_random_house``, kept in physical ranges by
*redrawing* out-of-range values (never clipping, which would pile values up on the bound):

=============  ==========================================  ==========================
column         distribution                                 kept in range by
=============  ==========================================  ==========================
YEAR_BUILT     floor(N(1995, 10))                           redraw if > reference year
SQUARE_FEET    N(3000, 750), one decimal                    redraw if < 400
NUM_BEDROOMS   uniform integer 2..6                         -
NUM_BATHROOMS  uniform integer 2..6, halved (1.0 .. 3.0)    -
LOT_ACRES      N(1.0, 0.25), two decimals                   redraw if < 0.05
GARAGE_SPACES  uniform integer 0..3                         -
FRONT_PORCH    'y' / 'n' with equal probability             -
DECK           'y' / 'n' with equal probability             -
=============  ==========================================  ==========================

Prices are computed from the features *as written* (after rounding), so the CSV alone
reproduces them. A row whose price would round to zero or less is redrawn whole (features
and noise): every PRICE is a positive whole number of dollars, with no pile-up at the
bound. Redrawing is rare at sensible noise levels (measured over 1,000 cities: about 1
row in 100,000 at sigma 10,000, 0.2 % at sigma 100,000 but up to 7 % in the cheapest
cities); at a sigma comparable to prices themselves it truncates the noise, so residuals
are skewed and ``CityTruth.mae_floor`` is only approximate.

The reference year is 2019, the notebook's ``MAX_YEAR``: no house is built after it, and
ages are counted from it. Data are reproducible: city *i*'s truth and rows come only from
``(seed, i)`` (through :class:`numpy.random.SeedSequence` spawn keys), so the same
arguments give byte-identical files, and the first 10 of 20 cities are those of 10.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from citymodels.cities import validate_city_id
from citymodels.schema import COLUMNS, FEATURES

__all__ = [
    "BASE_COEFFICIENTS",
    "BASE_INTERCEPT",
    "CITY_NAMES",
    "FEATURE_NAMES",
    "GROUND_TRUTH_FILENAME",
    "NOTEBOOK_CITY_LEVELS",
    "RAW_COLUMNS",
    "REFERENCE_YEAR",
    "CityTruth",
    "DatasetSummary",
    "RawTable",
    "city_names",
    "generate",
    "generate_city",
    "load_ground_truth",
    "true_price",
    "write_dataset",
]

RAW_COLUMNS: tuple[str, ...] = COLUMNS
"""The raw CSV columns, in the notebook's headerless order (docs/design.md §3)."""

FEATURE_NAMES: tuple[str, ...] = FEATURES
"""The eight raw features: every raw column but PRICE."""

REFERENCE_YEAR = 2019
"""The notebook's ``MAX_YEAR``: no house is built later; ages are counted from it."""

BASE_INTERCEPT = 100_000.0
"""Base price of the baseline formula (scaled by each city's price level)."""

BASE_COEFFICIENTS: Mapping[str, float] = MappingProxyType(
    {
        "YEAR_BUILT": 5_000.0,  # per year newer, i.e. -5,000 per year of age
        "SQUARE_FEET": 150.0,
        "NUM_BEDROOMS": 10_000.0,
        "NUM_BATHROOMS": 15_000.0,
        "LOT_ACRES": 15_000.0,
        "GARAGE_SPACES": 15_000.0,
        "FRONT_PORCH": 10_000.0,
        "DECK": 10_000.0,
    }
)
"""The notebook's price effects (with the deck counted), per unit of each raw feature."""

CITY_NAMES: tuple[str, ...] = (
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
)
"""The notebook's ten cities, in its order."""

NOTEBOOK_CITY_LEVELS: Mapping[str, float] = MappingProxyType(
    {
        # Rough relative price per square foot of these markets: coastal California and
        # New York well above the baseline, the Texas cities below it.
        "NewYork_NY": 2.0,
        "LosAngeles_CA": 1.7,
        "Chicago_IL": 1.0,
        "Houston_TX": 0.7,
        "Dallas_TX": 0.85,
        "Phoenix_AZ": 0.9,
        "Philadelphia_PA": 0.95,
        "SanAntonio_TX": 0.65,
        "SanDiego_CA": 1.6,
        "SanFrancisco_CA": 2.4,
    }
)
"""Fixed price level of each notebook city: multiplies every baseline effect."""

GROUND_TRUTH_FILENAME = "ground_truth.json"

# Real US cities for names past the notebook's ten; numbered suffixes take over when they
# run out. Suffixes start at 2 and state codes are letters, so a suffixed name can never
# equal a plain one.
_MORE_CITIES: tuple[str, ...] = (
    "Austin_TX", "Jacksonville_FL", "FortWorth_TX", "SanJose_CA", "Columbus_OH",
    "Charlotte_NC", "Indianapolis_IN", "Seattle_WA", "Denver_CO", "Washington_DC",
    "Boston_MA", "ElPaso_TX", "Nashville_TN", "Detroit_MI", "OklahomaCity_OK",
    "Portland_OR", "LasVegas_NV", "Memphis_TN", "Louisville_KY", "Baltimore_MD",
    "Milwaukee_WI", "Albuquerque_NM", "Tucson_AZ", "Fresno_CA", "Mesa_AZ",
    "Sacramento_CA", "Atlanta_GA", "KansasCity_MO", "ColoradoSprings_CO", "Omaha_NE",
    "Raleigh_NC", "Miami_FL", "LongBeach_CA", "VirginiaBeach_VA", "Oakland_CA",
    "Minneapolis_MN", "Tulsa_OK", "Tampa_FL", "Arlington_TX", "NewOrleans_LA",
    "Wichita_KS", "Cleveland_OH", "Bakersfield_CA", "Aurora_CO", "Anaheim_CA",
    "Honolulu_HI", "SantaAna_CA", "Riverside_CA", "CorpusChristi_TX", "Lexington_KY",
    "Henderson_NV", "Stockton_CA", "SaintPaul_MN", "Cincinnati_OH", "StLouis_MO",
    "Pittsburgh_PA", "Greensboro_NC", "Lincoln_NE", "Anchorage_AK", "Plano_TX",
    "Orlando_FL", "Irvine_CA", "Newark_NJ", "Durham_NC", "ChulaVista_CA",
    "Toledo_OH", "FortWayne_IN", "StPetersburg_FL", "Laredo_TX", "JerseyCity_NJ",
    "Chandler_AZ", "Madison_WI", "Lubbock_TX", "Scottsdale_AZ", "Reno_NV",
    "Buffalo_NY", "Gilbert_AZ", "Glendale_AZ", "NorthLasVegas_NV", "WinstonSalem_NC",
    "Chesapeake_VA", "Norfolk_VA", "Fremont_CA", "Garland_TX", "Irving_TX",
    "Hialeah_FL", "Richmond_VA", "Boise_ID", "Spokane_WA", "BatonRouge_LA",
    "Tacoma_WA", "SanBernardino_CA", "Modesto_CA", "Fontana_CA", "DesMoines_IA",
    "SaltLakeCity_UT", "Providence_RI", "Hartford_CT", "Burlington_VT", "Portland_ME",
    "Manchester_NH", "Charleston_SC", "Charleston_WV", "Jackson_MS", "Birmingham_AL",
    "LittleRock_AR", "Billings_MT", "Fargo_ND", "SiouxFalls_SD", "Cheyenne_WY",
    "Wilmington_DE", "Springfield_IL", "Savannah_GA", "Knoxville_TN", "Rochester_NY",
)  # fmt: skip


# Spread of the price effects of cities outside the notebook's ten (log-normal sigmas):
# levels from about half to double the baseline, each effect within about +-30 % of it.
_LEVEL_SIGMA = 0.35
_EFFECT_SIGMA = 0.15

# A row is redrawn while its price rounds below one dollar. Even a noise sigma far above
# every price accepts about half the rows per round, so this bound is never reached by
# accident; it only turns an impossible request into an error instead of a hang.
_MAX_REDRAW_ROUNDS = 1_000


def city_names(n: int) -> list[str]:
    """Return ``n`` distinct, valid city ids; the same ``n`` always gives the same list.

    Parameters
    ----------
    n : int
        How many names (at least 0).

    Returns
    -------
    list of str
        The notebook's ten cities first, in its order, then real US cities
        (``Austin_TX``, ...), then the same again with suffixes ``_2``, ``_3``, ...
        (``Austin_TX_2``). ``city_names(n)`` is a prefix of ``city_names(m)`` for
        ``n <= m``. Every name matches ``^[A-Za-z][A-Za-z0-9_-]{0,63}$``.
    """
    if n < 0:
        raise ValueError(f"number of cities must be >= 0, got {n}")
    names = list(CITY_NAMES[:n])
    for i in range(n - len(names)):
        round_, position = divmod(i, len(_MORE_CITIES))
        base = _MORE_CITIES[position]
        names.append(base if round_ == 0 else f"{base}_{round_ + 1}")
    return names


@dataclass(frozen=True)
class CityTruth:
    """The price formula one city's data were generated with (see the module docstring).

    Attributes
    ----------
    city : str
        City id.
    intercept : float
        Base price: a house with every feature zero, built in ``reference_year``.
    coefficients : Mapping[str, float]
        Price effect per unit of each of the eight raw features (``FEATURE_NAMES``);
        for FRONT_PORCH and DECK the effect of ``'y'``; for YEAR_BUILT the effect of one
        year newer (minus the effect of one year of age).
    noise_sigma : float
        Standard deviation of the Gaussian noise added to each price.
    rows : int
        Number of rows generated.
    seed : int
        The dataset's seed.
    index : int
        The city's position in the dataset; with ``seed`` it determines the city's data.
    reference_year : int
        Latest possible YEAR_BUILT; ages are counted from it.
    """

    city: str
    intercept: float
    coefficients: Mapping[str, float] = field(hash=False)
    noise_sigma: float
    rows: int
    seed: int
    index: int
    reference_year: int = REFERENCE_YEAR

    def __post_init__(self) -> None:
        if set(self.coefficients) != set(FEATURE_NAMES):
            raise ValueError(
                f"coefficients must have exactly the keys {list(FEATURE_NAMES)}, "
                f"got {sorted(self.coefficients)}"
            )
        if not (math.isfinite(self.noise_sigma) and self.noise_sigma >= 0):
            raise ValueError(f"noise_sigma must be finite and >= 0, got {self.noise_sigma}")
        # Frozen means frozen: a read-only copy, in FEATURE_NAMES order, of plain floats.
        coefficients = {name: float(self.coefficients[name]) for name in FEATURE_NAMES}
        object.__setattr__(self, "coefficients", MappingProxyType(coefficients))

    @property
    def mae_floor(self) -> float:
        """Expected absolute error of the true formula itself: ``noise_sigma * sqrt(2/pi)``.

        No model can expect a lower MAE on this city's data.
        """
        return self.noise_sigma * math.sqrt(2.0 / math.pi)

    @property
    def raw_intercept(self) -> float:
        """The intercept of the same formula with YEAR_BUILT used as is, not as age.

        This is what a linear model fitted on the raw columns should find.
        """
        return self.intercept - self.coefficients["YEAR_BUILT"] * self.reference_year

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict (``mae_floor`` included for readers of the file)."""
        return {
            "city": self.city,
            "intercept": self.intercept,
            "coefficients": dict(self.coefficients),
            "noise_sigma": self.noise_sigma,
            "rows": self.rows,
            "seed": self.seed,
            "index": self.index,
            "reference_year": self.reference_year,
            "mae_floor": self.mae_floor,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> CityTruth:
        """Rebuild a truth from :meth:`to_json`'s dict (or its JSON text).

        ``mae_floor`` is derived, so it is recomputed rather than read.
        """
        if isinstance(data, str):
            data = json.loads(data)
            if not isinstance(data, Mapping):
                raise TypeError(f"a city truth is a JSON object, got {type(data).__name__}")
        return cls(
            city=str(data["city"]),
            intercept=float(data["intercept"]),
            coefficients={str(k): float(v) for k, v in data["coefficients"].items()},
            noise_sigma=float(data["noise_sigma"]),
            rows=int(data["rows"]),
            seed=int(data["seed"]),
            index=int(data["index"]),
            reference_year=int(data.get("reference_year", REFERENCE_YEAR)),
        )


@dataclass(frozen=True, eq=False)
class RawTable:
    """One city's raw rows as numpy columns (cheap to keep, render or fit on).

    Values are exactly what the CSV says: SQUARE_FEET at one decimal, LOT_ACRES at two,
    NUM_BATHROOMS in halves, PRICE in whole dollars; FRONT_PORCH and DECK as booleans
    (``True`` is ``'y'``).
    """

    year_built: NDArray[np.int64]
    square_feet: NDArray[np.float64]
    num_bedrooms: NDArray[np.int64]
    num_bathrooms: NDArray[np.float64]
    lot_acres: NDArray[np.float64]
    garage_spaces: NDArray[np.int64]
    front_porch: NDArray[np.bool_]
    deck: NDArray[np.bool_]
    price: NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.price.shape[0])

    def columns(self) -> dict[str, NDArray[Any]]:
        """Return the columns keyed by ``RAW_COLUMNS`` names, FRONT_PORCH/DECK as 'y'/'n'."""
        return {
            "YEAR_BUILT": self.year_built,
            "SQUARE_FEET": self.square_feet,
            "NUM_BEDROOMS": self.num_bedrooms,
            "NUM_BATHROOMS": self.num_bathrooms,
            "LOT_ACRES": self.lot_acres,
            "GARAGE_SPACES": self.garage_spaces,
            "FRONT_PORCH": np.where(self.front_porch, "y", "n"),
            "DECK": np.where(self.deck, "y", "n"),
            "PRICE": self.price,
        }

    def to_csv_bytes(self, *, header: bool = False) -> bytes:
        """Render the raw CSV: 9 columns in ``RAW_COLUMNS`` order, ``\\n`` line ends.

        Parameters
        ----------
        header : bool
            Write a first line with the column names. The default is the notebook's
            headerless format.
        """
        # Built column-wise with numpy's string ufuncs: a Python-level loop over rows
        # would dominate the time of writing thousands of cities.
        comma = np.bytes_(b",")
        fields = [
            _int_text(self.year_built),
            _fixed_text(self.square_feet, 1),
            _int_text(self.num_bedrooms),
            _fixed_text(self.num_bathrooms, 1),
            _fixed_text(self.lot_acres, 2),
            _int_text(self.garage_spaces),
            np.where(self.front_porch, b"y", b"n"),
            np.where(self.deck, b"y", b"n"),
            _int_text(self.price),
        ]
        lines = fields[0]
        for column in fields[1:]:
            lines = np.strings.add(np.strings.add(lines, comma), column)
        parts: list[bytes] = lines.tolist()
        if header:
            parts.insert(0, ",".join(RAW_COLUMNS).encode("ascii"))
        return b"\n".join(parts) + b"\n" if parts else b""

    def to_csv(self, *, header: bool = False) -> str:
        """Render the raw CSV as text (see :meth:`to_csv_bytes`)."""
        return self.to_csv_bytes(header=header).decode("ascii")


@dataclass(frozen=True)
class DatasetSummary:
    """What :func:`write_dataset` wrote."""

    out_dir: Path
    cities: tuple[str, ...]
    rows: int
    seed: int
    noise: float
    csv_paths: tuple[Path, ...]
    ground_truth_path: Path
    total_bytes: int
    """Bytes of all CSV files together."""


def true_price(truth: CityTruth, rows: RawTable | Mapping[str, ArrayLike]) -> NDArray[np.float64]:
    """Return the noiseless price of each row under a city's truth (not rounded).

    Parameters
    ----------
    truth : CityTruth
        The city's formula.
    rows : RawTable or mapping of str to array-like
        Raw rows: a :class:`RawTable`, or columns keyed by the feature names (extra keys
        such as PRICE are ignored), FRONT_PORCH/DECK as ``'y'``/``'n'`` (any case) or
        booleans.

    Returns
    -------
    numpy.ndarray of float64
        One price per row.
    """
    if isinstance(rows, RawTable):
        features = _features(rows, truth.reference_year)
    else:
        features = {name: _feature_column(name, rows[name]) for name in FEATURE_NAMES}
        features["YEAR_BUILT"] = features["YEAR_BUILT"] - truth.reference_year
    return _linear_price(truth, features)


def generate_city(
    city: str, rows: int, *, seed: int, noise: float, index: int
) -> tuple[RawTable, CityTruth]:
    """Generate one city's truth and raw rows.

    Parameters
    ----------
    city : str
        City id (design §3). A notebook city gets its fixed price level; any other city
        draws its effects from its stream.
    rows : int
        Number of rows (at least 1).
    seed : int
        The dataset's seed (at least 0).
    noise : float
        Standard deviation of the Gaussian noise on prices, in dollars (0 for none).
    index : int
        The city's position in the dataset. The result depends only on ``(city, rows,
        seed, noise, index)``, never on how many other cities are generated.

    Returns
    -------
    tuple of (RawTable, CityTruth)
    """
    validate_city_id(city)  # generated names become file names and S3 keys
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be finite and >= 0, got {noise}")

    # Separate streams for the truth and the rows, so that asking for more rows never
    # changes a city's price effects.
    truth_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, 0)))
    rows_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, 1)))

    intercept, coefficients = _city_effects(city, truth_rng)
    truth = CityTruth(
        city=city,
        intercept=intercept,
        coefficients=coefficients,
        noise_sigma=float(noise),
        rows=rows,
        seed=seed,
        index=index,
    )
    return _draw_table(truth, rows_rng), truth


def generate(
    n_cities: int, rows: int, *, seed: int, noise: float
) -> Iterator[tuple[str, RawTable, CityTruth]]:
    """Generate ``n_cities`` cities lazily, named by :func:`city_names`.

    Parameters are those of :func:`generate_city`; city *i* is
    ``generate_city(city_names(n_cities)[i], rows, seed=seed, noise=noise, index=i)``.

    Yields
    ------
    tuple of (str, RawTable, CityTruth)
        City id, its rows and its truth.
    """
    for index, city in enumerate(city_names(n_cities)):
        table, truth = generate_city(city, rows, seed=seed, noise=noise, index=index)
        yield city, table, truth


def write_dataset(
    out_dir: str | Path,
    n_cities: int,
    rows: int,
    *,
    seed: int,
    noise: float,
    header: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> DatasetSummary:
    """Write ``out_dir/{city}.csv`` for each city and ``out_dir/ground_truth.json``.

    Parameters
    ----------
    out_dir : str or Path
        Created if missing. Files of the same names are overwritten; other files
        (say, cities of an earlier, larger run) are left alone.
    n_cities, rows, seed, noise
        As in :func:`generate`.
    header : bool
        Write a header row in each CSV (default: the notebook's headerless format).
    progress : callable, optional
        Called as ``progress(done, total)`` after each city is written.

    Returns
    -------
    DatasetSummary

    Notes
    -----
    ``ground_truth.json`` is ``{"seed", "noise", "rows", "cities": {city: truth}}``
    with each truth as :meth:`CityTruth.to_json`. The same arguments write byte-identical
    files.
    """
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    noise = float(noise)
    truths: dict[str, dict[str, Any]] = {}
    paths: list[Path] = []
    total_bytes = 0
    for done, (city, table, truth) in enumerate(
        generate(n_cities, rows, seed=seed, noise=noise), start=1
    ):
        path = directory / f"{city}.csv"
        content = table.to_csv_bytes(header=header)
        path.write_bytes(content)
        total_bytes += len(content)
        paths.append(path)
        truths[city] = truth.to_json()
        if progress is not None:
            progress(done, n_cities)

    truth_path = directory / GROUND_TRUTH_FILENAME
    document = {"seed": seed, "noise": noise, "rows": rows, "cities": truths}
    truth_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return DatasetSummary(
        out_dir=directory,
        cities=tuple(truths),
        rows=rows,
        seed=seed,
        noise=noise,
        csv_paths=tuple(paths),
        ground_truth_path=truth_path,
        total_bytes=total_bytes,
    )


def load_ground_truth(path: str | Path) -> dict[str, CityTruth]:
    """Read the truths written by :func:`write_dataset`.

    Parameters
    ----------
    path : str or Path
        The dataset directory, or the ``ground_truth.json`` file itself.

    Returns
    -------
    dict of str to CityTruth
        Keyed by city, in the dataset's order.
    """
    file = Path(path)
    if file.is_dir():
        file = file / GROUND_TRUTH_FILENAME
    document = json.loads(file.read_text(encoding="utf-8"))
    return {city: CityTruth.from_json(data) for city, data in document["cities"].items()}


# --- generation ---------------------------------------------------------------------


def _city_effects(city: str, rng: np.random.Generator) -> tuple[float, dict[str, float]]:
    """Return a city's base price and price effects, rounded to cents."""
    if city in NOTEBOOK_CITY_LEVELS:
        level = NOTEBOOK_CITY_LEVELS[city]
        factors = np.full(len(FEATURE_NAMES) + 1, level)
    else:
        level = float(rng.lognormal(0.0, _LEVEL_SIGMA))
        factors = level * rng.lognormal(0.0, _EFFECT_SIGMA, size=len(FEATURE_NAMES) + 1)
    # Rounding to cents keeps the JSON short and makes the truth file the exact formula;
    # it also hides last-bit differences of exp() between platforms.
    intercept = round(BASE_INTERCEPT * float(factors[0]), 2)
    coefficients = {
        name: round(BASE_COEFFICIENTS[name] * float(factor), 2)
        for name, factor in zip(FEATURE_NAMES, factors[1:], strict=True)
    }
    return intercept, coefficients


def _draw_table(truth: CityTruth, rng: np.random.Generator) -> RawTable:
    """Draw rows, redrawing whole rows whose price would not be a positive dollar amount."""
    columns = _draw_features(rng, truth.rows, truth.reference_year)
    price = _noisy_price(truth, columns, rng)
    for _ in range(_MAX_REDRAW_ROUNDS):
        bad = np.flatnonzero(price < 1)
        if bad.size == 0:
            break
        redrawn = _draw_features(rng, bad.size, truth.reference_year)
        for name, values in redrawn.items():
            columns[name][bad] = values
        price[bad] = _noisy_price(truth, redrawn, rng)
    else:
        raise RuntimeError(
            f"{truth.city}: could not draw {truth.rows} rows with positive prices "
            f"in {_MAX_REDRAW_ROUNDS} rounds (noise {truth.noise_sigma})"
        )
    return RawTable(
        year_built=columns["YEAR_BUILT"].astype(np.int64),
        square_feet=columns["SQUARE_FEET"],
        num_bedrooms=columns["NUM_BEDROOMS"].astype(np.int64),
        num_bathrooms=columns["NUM_BATHROOMS"],
        lot_acres=columns["LOT_ACRES"],
        garage_spaces=columns["GARAGE_SPACES"].astype(np.int64),
        front_porch=columns["FRONT_PORCH"] == 1.0,
        deck=columns["DECK"] == 1.0,
        price=price.astype(np.int64),
    )


def _draw_features(
    rng: np.random.Generator, n: int, reference_year: int
) -> dict[str, NDArray[np.float64]]:
    """Draw ``n`` rows of features as float columns, already rounded as written."""

    def square_feet(k: int) -> NDArray[np.float64]:
        return np.rint(rng.normal(3000.0, 750.0, size=k) * 10.0) / 10.0

    def lot_acres(k: int) -> NDArray[np.float64]:
        return np.rint(rng.normal(1.0, 0.25, size=k) * 100.0) / 100.0

    def year_built(k: int) -> NDArray[np.float64]:
        return np.floor(rng.normal(1995.0, 10.0, size=k))

    return {
        "YEAR_BUILT": _redraw_outside(year_built, n, high=reference_year),
        "SQUARE_FEET": _redraw_outside(square_feet, n, low=400.0),
        "NUM_BEDROOMS": rng.integers(2, 7, size=n).astype(np.float64),
        "NUM_BATHROOMS": rng.integers(2, 7, size=n) / 2.0,
        "LOT_ACRES": _redraw_outside(lot_acres, n, low=0.05),
        "GARAGE_SPACES": rng.integers(0, 4, size=n).astype(np.float64),
        "FRONT_PORCH": rng.integers(0, 2, size=n).astype(np.float64),
        "DECK": rng.integers(0, 2, size=n).astype(np.float64),
    }


def _redraw_outside(
    draw: Callable[[int], NDArray[np.float64]],
    n: int,
    *,
    low: float = -math.inf,
    high: float = math.inf,
) -> NDArray[np.float64]:
    """Draw ``n`` values, redrawing those outside ``[low, high]`` (a truncated law)."""
    values = draw(n)
    bad = np.flatnonzero((values < low) | (values > high))
    while bad.size:
        values[bad] = draw(bad.size)
        bad = bad[(values[bad] < low) | (values[bad] > high)]
    return values


def _noisy_price(
    truth: CityTruth, columns: Mapping[str, NDArray[np.float64]], rng: np.random.Generator
) -> NDArray[np.float64]:
    features = dict(columns)
    features["YEAR_BUILT"] = columns["YEAR_BUILT"] - truth.reference_year
    price = _linear_price(truth, features)
    # Always drawn, even for sigma 0, so the stream (hence the features) is the same
    # whatever the noise level: noise 0 and noise 10,000 give the same houses (bar rows
    # redrawn for a non-positive price).
    price += rng.normal(0.0, 1.0, size=price.shape[0]) * truth.noise_sigma
    return np.rint(price)


def _linear_price(
    truth: CityTruth, features: Mapping[str, NDArray[np.float64]]
) -> NDArray[np.float64]:
    """``intercept + sum(coefficient * feature)``, YEAR_BUILT already relative to the
    reference year; always summed in FEATURE_NAMES order so results are bit-identical."""
    n = next(iter(features.values())).shape[0]
    price = np.full(n, truth.intercept)
    for name in FEATURE_NAMES:
        price += truth.coefficients[name] * features[name]
    return price


def _features(table: RawTable, reference_year: int) -> dict[str, NDArray[np.float64]]:
    return {
        "YEAR_BUILT": (table.year_built - reference_year).astype(np.float64),
        "SQUARE_FEET": table.square_feet,
        "NUM_BEDROOMS": table.num_bedrooms.astype(np.float64),
        "NUM_BATHROOMS": table.num_bathrooms,
        "LOT_ACRES": table.lot_acres,
        "GARAGE_SPACES": table.garage_spaces.astype(np.float64),
        "FRONT_PORCH": table.front_porch.astype(np.float64),
        "DECK": table.deck.astype(np.float64),
    }


def _feature_column(name: str, values: ArrayLike) -> NDArray[np.float64]:
    array = np.asarray(values)
    if name not in ("FRONT_PORCH", "DECK") or array.dtype == np.bool_:
        return np.asarray(values, dtype=np.float64)
    flags = np.strings.lower(array.astype(np.str_))
    unknown = ~np.isin(flags, ["y", "n"])
    if unknown.any():
        raise ValueError(f"{name} must be 'y' or 'n', got {array[unknown][0]!r}")
    is_yes: NDArray[np.bool_] = flags == "y"
    return is_yes.astype(np.float64)


# --- CSV rendering ------------------------------------------------------------------

# Decimal text of 0..9999, and the same zero-padded to 2 and to 4 digits: looking numbers
# up in these tables, 4 digits at a time, is several times faster than numpy's
# int-to-string conversion (and gives narrow byte strings, which keep joining fast).
_SMALL_INTS: NDArray[np.bytes_] = np.arange(10_000).astype("S4")
_TWO_DIGITS: NDArray[np.bytes_] = np.strings.zfill(_SMALL_INTS[:100], 2)
_FOUR_DIGITS: NDArray[np.bytes_] = np.strings.zfill(_SMALL_INTS, 4)


def _int_text(values: NDArray[np.integer[Any]]) -> NDArray[np.bytes_]:
    """Decimal text of non-negative whole numbers."""
    ints = values.astype(np.int64)
    if ints.size == 0 or ints.max() < _SMALL_INTS.size:
        return _SMALL_INTS[ints]
    high, low = np.divmod(ints, _SMALL_INTS.size)
    return np.where(high > 0, np.strings.add(_int_text(high), _FOUR_DIGITS[low]), _SMALL_INTS[low])


def _fixed_text(values: NDArray[np.float64], decimals: int) -> NDArray[np.bytes_]:
    """Text of non-negative numbers with exactly ``decimals`` (1 or 2) decimals."""
    scale = 10**decimals
    scaled = np.rint(values * scale).astype(np.int64)
    whole, fraction = np.divmod(scaled, scale)
    fraction_text = _TWO_DIGITS[fraction] if decimals == 2 else _SMALL_INTS[fraction]
    return np.strings.add(np.strings.add(_int_text(whole), np.bytes_(b".")), fraction_text)
