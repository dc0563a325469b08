"""City ids: the one name a city goes by in S3 keys, job tags, the registry and the API."""

from __future__ import annotations

import re

from citymodels.errors import InvalidCityId

CITY_ID_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
"""A letter, then up to 63 letters, digits, ``_`` or ``-`` (e.g. ``NewYork_NY``)."""

MAX_CITY_ID_LENGTH = 64


def is_valid_city_id(city: object) -> bool:
    """Return whether ``city`` is a valid city id (never raises)."""
    return isinstance(city, str) and CITY_ID_PATTERN.fullmatch(city) is not None


def validate_city_id(city: object) -> str:
    """Return ``city`` if it is a valid city id, else raise :class:`InvalidCityId`.

    The message says precisely what is wrong (empty, too long, which character at
    which position), because the id usually comes from an S3 key or a URL a person typed.
    ``fullmatch`` is used on purpose: ``re.match(...$)`` would accept a trailing newline.

    Parameters
    ----------
    city
        The candidate id.

    Returns
    -------
    str
        The same id.

    Raises
    ------
    InvalidCityId
        When the id is not a string, is empty or too long, or contains a character
        outside ``[A-Za-z0-9_-]`` or does not start with a letter.
    """
    if not isinstance(city, str):
        raise InvalidCityId(f"city id must be a string, got {type(city).__name__}", field="city")
    if city == "":
        raise InvalidCityId("city id is empty", field="city")
    if len(city) > MAX_CITY_ID_LENGTH:
        raise InvalidCityId(
            f"city id is {len(city)} characters long; at most {MAX_CITY_ID_LENGTH} are allowed",
            field="city",
        )
    if not ("A" <= city[0] <= "Z" or "a" <= city[0] <= "z"):
        raise InvalidCityId(
            f"city id {city!r} must start with a letter (A-Z or a-z), not {city[0]!r}",
            field="city",
        )
    for position, char in enumerate(city):
        if not (char.isascii() and (char.isalnum() or char in "_-")):
            raise InvalidCityId(
                f"city id {city!r} contains {char!r} at position {position}; "
                "only letters, digits, '_' and '-' are allowed",
                field="city",
            )
    return city
