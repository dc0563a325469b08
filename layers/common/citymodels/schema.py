"""The raw house record and the one transform from raw record to model features.

Raw CSV (docs/design.md §3): ``YEAR_BUILT, SQUARE_FEET, NUM_BEDROOMS, NUM_BATHROOMS,
LOT_ACRES, GARAGE_SPACES, FRONT_PORCH, DECK, PRICE``. The features the model sees are
the six numeric columns as numbers (Linear Learner normalises them itself) followed by
a one-hot encoding of FRONT_PORCH and DECK with the fixed vocabulary ``("y", "n")``:
ten features, the notebook's ``feature_dim=10``.

The transform has no per-city state (the notebook fitted a preprocessor on the last
city and used it for all); it is used unchanged by the processing job
(``preprocessing/preprocess.py``) and by the inference pipeline's first container
(``preprocessing/inference.py``). It works on plain Python rows: a one-row pandas
transform costs ~1.5 ms, more than the endpoint's whole latency budget.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from citymodels.errors import InvalidRecord

SCHEMA_VERSION = "1"
"""Bumped whenever :func:`encode` changes; recorded with every model version."""

LABEL = "PRICE"
NUMERIC_FEATURES: tuple[str, ...] = (
    "YEAR_BUILT",
    "SQUARE_FEET",
    "NUM_BEDROOMS",
    "NUM_BATHROOMS",
    "LOT_ACRES",
    "GARAGE_SPACES",
)
FLAG_FEATURES: tuple[str, ...] = ("FRONT_PORCH", "DECK")
FEATURES: tuple[str, ...] = NUMERIC_FEATURES + FLAG_FEATURES
COLUMNS: tuple[str, ...] = (*FEATURES, LABEL)
"""The raw CSV columns, in the headerless order."""

FLAG_VOCABULARY: tuple[str, ...] = ("y", "n")
"""The fixed one-hot vocabulary of FRONT_PORCH and DECK (case-insensitive on input)."""

ENCODED_FEATURES: tuple[str, ...] = NUMERIC_FEATURES + tuple(
    f"{flag}_{value}" for flag in FLAG_FEATURES for value in FLAG_VOCABULARY
)
FEATURE_DIM = len(ENCODED_FEATURES)  # 10, Linear Learner's feature_dim


@dataclass(frozen=True)
class FieldRule:
    """What a value of one numeric column may be.

    Attributes
    ----------
    minimum, maximum
        Inclusive bounds of a plausible value.
    whole
        Whether the value must be a whole number (years, counts).
    exclusive_minimum
        Whether ``minimum`` itself is excluded (PRICE must be > 0).
    """

    minimum: float
    maximum: float
    whole: bool = False
    exclusive_minimum: bool = False

    def describe(self) -> str:
        """Return the rule as a phrase, e.g. ``'a whole number from 0 to 100'``."""
        kind = "a whole number" if self.whole else "a number"
        low = f"greater than {_fmt(self.minimum)}" if self.exclusive_minimum else None
        if low:
            return f"{kind} {low} and at most {_fmt(self.maximum)}"
        return f"{kind} from {_fmt(self.minimum)} to {_fmt(self.maximum)}"


def _fmt(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


FIELD_RULES: dict[str, FieldRule] = {
    "YEAR_BUILT": FieldRule(1600, 2100, whole=True),
    "SQUARE_FEET": FieldRule(0, 1_000_000, exclusive_minimum=True),
    "NUM_BEDROOMS": FieldRule(0, 1_000, whole=True),
    "NUM_BATHROOMS": FieldRule(0, 1_000),
    "LOT_ACRES": FieldRule(0, 1_000_000),
    "GARAGE_SPACES": FieldRule(0, 1_000, whole=True),
    "PRICE": FieldRule(0, 1e12, exclusive_minimum=True),
}
"""Plausible ranges (docs/design.md §3): beyond "finite, PRICE > 0", no negative areas or
counts, no fractional years, so that an obvious data error is reported instead of trained on."""

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_number(column: str, text: object) -> float:
    """Parse and check one numeric value of ``column``.

    Only plain decimal notation is accepted (``float()`` would also take ``nan``,
    ``inf`` and ``1_000``, none of which is a house's value).

    Raises
    ------
    InvalidRecord
        With ``field=column`` and a message naming the value and the rule it broke.
    """
    rule = FIELD_RULES[column]
    if isinstance(text, bool):  # bool is an int subclass; True is no year
        raise InvalidRecord(f"{column} must be a number, got {text!r}", field=column)
    if isinstance(text, (int, float)):
        try:
            value = float(text)
        except OverflowError:  # a JSON integer of hundreds of digits
            raise InvalidRecord(
                f"{column} must be {rule.describe()}, got {_clip(str(text))}", field=column
            ) from None
        if not math.isfinite(value):
            raise InvalidRecord(f"{column} must be finite, got {text!r}", field=column)
    elif isinstance(text, str):
        # float() is the fast path; it also takes "nan", "inf", "1_000" and non-ASCII
        # digits, none of which is a house's value, so those are turned away first.
        try:
            value = float(text) if text.isascii() and "_" not in text else math.nan
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            stripped = text.strip()
            if not stripped:
                raise InvalidRecord(f"{column} is empty", field=column)
            if stripped.lower().lstrip("+-") in ("nan", "inf", "infinity") or (
                _NUMBER.fullmatch(stripped) is not None  # e.g. 1e999
            ):
                raise InvalidRecord(
                    f"{column} must be finite, got {_clip(stripped)!r}", field=column
                )
            raise InvalidRecord(f"{column} is not a number: {_clip(stripped)!r}", field=column)
    else:
        raise InvalidRecord(f"{column} must be a number, got {type(text).__name__}", field=column)
    too_low = value <= rule.minimum if rule.exclusive_minimum else value < rule.minimum
    if too_low or value > rule.maximum or (rule.whole and value != int(value)):
        raise InvalidRecord(
            f"{column} must be {rule.describe()}, got {_clip(str(text).strip())}", field=column
        )
    return value


def parse_flag(column: str, text: object) -> str:
    """Parse a y/n column (case-insensitive, surrounding spaces ignored) to ``'y'``/``'n'``."""
    if isinstance(text, str):
        value = text.strip().lower()
        if value in FLAG_VOCABULARY:
            return value
        shown = _clip(text.strip())
        raise InvalidRecord(f"{column} must be 'y' or 'n', got {shown!r}", field=column)
    raise InvalidRecord(f"{column} must be 'y' or 'n', got {text!r}", field=column)


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def encode_values(values: Sequence[object]) -> list[float]:
    """Encode one house's eight raw feature values, in :data:`FEATURES` order.

    Values may be strings (from CSV) or numbers and ``'y'``/``'n'`` (from JSON); each is
    parsed and range-checked as in :func:`parse_number` / :func:`parse_flag`.

    Returns
    -------
    list of float
        The :data:`FEATURE_DIM` model features, in :data:`ENCODED_FEATURES` order.

    Raises
    ------
    InvalidRecord
        Wrong number of values, or a value that does not parse; ``field`` names it.
    """
    if len(values) != len(FEATURES):
        raise InvalidRecord(
            f"expected {len(FEATURES)} values ({', '.join(FEATURES)}), got {len(values)}",
            field="features",
        )
    encoded = [parse_number(column, values[i]) for i, column in enumerate(NUMERIC_FEATURES)]
    offset = len(NUMERIC_FEATURES)
    for i, column in enumerate(FLAG_FEATURES):
        flag = parse_flag(column, values[offset + i])
        encoded.extend(1.0 if flag == value else 0.0 for value in FLAG_VOCABULARY)
    return encoded


def encode_record(record: Mapping[str, object]) -> list[float]:
    """Encode one house given as a mapping of column name to value.

    Names are read as :func:`record_features` reads them.

    Raises
    ------
    InvalidRecord
        A missing or unknown column, or a value that does not parse.
    """
    return encode_values(list(record_features(record).values()))


def record_features(record: Mapping[str, object]) -> dict[str, object]:
    """Return one house's raw feature values by column name, in :data:`FEATURES` order.

    Names are matched case-insensitively (surrounding spaces ignored); a PRICE entry is
    dropped (callers may pass a whole raw row); any other unknown name is an error, so a
    typo is not silently dropped, and so are two names that differ only in case (``DECK``
    and ``deck``). The values are returned as given, unparsed.

    Raises
    ------
    InvalidRecord
        A missing or unknown column, or a column given twice; ``field`` names it.
    """
    by_name: dict[str, object] = {}
    given: dict[str, object] = {}
    for name, value in record.items():
        upper = str(name).strip().upper()
        if upper not in COLUMNS:
            raise InvalidRecord(
                f"unknown field {name!r}; expected {', '.join(FEATURES)}", field=str(name)
            )
        if upper in by_name:  # names are case-insensitive: which of the two was meant?
            raise InvalidRecord(
                f"{upper} is given twice, as {given[upper]!r} and {name!r} "
                "(field names are case-insensitive)",
                field=upper,
            )
        by_name[upper] = value
        given[upper] = name
    missing = [column for column in FEATURES if column not in by_name]
    if missing:
        raise InvalidRecord(f"missing field(s): {', '.join(missing)}", field=missing[0])
    return {column: by_name[column] for column in FEATURES}
