"""Version ids: minted when an upload is accepted, sorting in upload order.

A version id is ``{time}-{sequencer}``: the upload's event time in UTC to the
millisecond (``20261125T004255123Z``) and the S3 sequencer of the ``PutObject``, upper
case and right-padded with zeros to 32 hex digits. S3 documents that sequencers of one
key compare as hexadecimal after right-padding the shorter with zeros; with both parts
fixed-width, plain string order is upload order — whatever order the jobs finish in.

For example ``20261125T004255123Z-0062A1B2C3D4E5F60000000000000000``.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from citymodels.errors import InvalidVersion

SEQUENCER_WIDTH = 32
_TIME_FORMAT = "%Y%m%dT%H%M%S"
# [0-9], not \d: \d also matches other scripts' digits, and the OpenAPI document
# gives this pattern to clients, whose regex engines read \d as ASCII digits.
VERSION_PATTERN = re.compile(r"([0-9]{8}T[0-9]{6})([0-9]{3})Z-([0-9A-F]{32})")
_SEQUENCER = re.compile(r"[0-9A-Fa-f]{1,32}")


def mint_version(event_time: datetime | str, sequencer: str) -> str:
    """Mint the version id of an accepted upload.

    Parameters
    ----------
    event_time
        The upload's time: an aware ``datetime`` or an ISO 8601 string as in
        EventBridge events (``2026-11-25T00:42:55Z``, fractions and offsets allowed).
    sequencer
        The S3 event's ``sequencer`` (hex).

    Returns
    -------
    str
        The version id.

    Raises
    ------
    InvalidVersion
        The time has no time zone or does not parse, or the sequencer is not 1-32 hex digits.
    """
    when = _parse_time(event_time)
    if not isinstance(sequencer, str) or _SEQUENCER.fullmatch(sequencer) is None:
        raise InvalidVersion(
            f"S3 sequencer must be 1 to {SEQUENCER_WIDTH} hex digits, got {sequencer!r}",
            field="sequencer",
        )
    stamp = when.strftime(_TIME_FORMAT) + f"{when.microsecond // 1000:03d}Z"
    return f"{stamp}-{sequencer.upper().ljust(SEQUENCER_WIDTH, '0')}"


def validate_version(version: object) -> str:
    """Return ``version`` if it is a well-formed version id, else raise :class:`InvalidVersion`."""
    if not isinstance(version, str) or VERSION_PATTERN.fullmatch(version) is None:
        raise InvalidVersion(
            f"{version!r} is not a version id (expected e.g. "
            "20261125T004255123Z-0062A1B2C3D4E5F60000000000000000)",
            field="version",
        )
    return version


def version_time(version: str) -> datetime:
    """Return the upload time recorded in a version id (UTC)."""
    match = VERSION_PATTERN.fullmatch(validate_version(version))
    assert match is not None  # validated above
    base = datetime.strptime(match.group(1), _TIME_FORMAT)
    return base.replace(microsecond=int(match.group(2)) * 1000, tzinfo=timezone.utc)


def is_newer(candidate: str, than: str | None) -> bool:
    """Return whether version ``candidate`` was uploaded after ``than`` (None: nothing yet)."""
    validate_version(candidate)
    return than is None or candidate > validate_version(than)


def _parse_time(value: datetime | str) -> datetime:
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError as err:
            raise InvalidVersion(f"event time {value!r} is not ISO 8601", field="time") from err
    elif isinstance(value, datetime):
        parsed = value
    else:
        raise InvalidVersion(f"event time must be a datetime, got {value!r}", field="time")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise InvalidVersion(f"event time {value!r} has no time zone", field="time")
    return parsed.astimezone(timezone.utc)
