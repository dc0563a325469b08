"""The DataBucket's S3 layout (docs/design.md §3): a builder and a parser for every prefix.

Every key is built here and nowhere else, and every city id, run and version that goes
into a key is validated first, so a malformed id can never address another prefix.

| prefix                                              | written by      |
|-----------------------------------------------------|-----------------|
| ``raw/{city}/{name}.csv``                           | the user        |
| ``processed/{city}/{run}/{split}/{split}.csv``      | processing job  |
| ``training/{city}/{run}/...``                       | training job    |
| ``mme/{city}/{version}.tar.gz``                     | publish         |
| ``reports/{city}/{run}/{validation,gate}.json``     | onboard/publish |
| ``reports/_rejected/{hash}.json``                   | onboard         |
| ``artifacts/...``                                   | deployment      |

A run's id is the version id minted when its upload is accepted
(:func:`citymodels.versions.mint_version`): one accepted upload is one run, and the
model it trains is published under that version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from citymodels.cities import validate_city_id
from citymodels.errors import InvalidKey
from citymodels.versions import validate_version

RAW_PREFIX = "raw/"
PROCESSED_PREFIX = "processed/"
TRAINING_PREFIX = "training/"
MME_PREFIX = "mme/"
REPORTS_PREFIX = "reports/"
REJECTED_PREFIX = "reports/_rejected/"
ARTIFACTS_PREFIX = "artifacts/"
INPUTS_PREFIX = "inputs/"

SPLITS: tuple[str, ...] = ("train", "validation", "test", "test-raw")
"""The processing job's outputs; ``test-raw`` keeps the test rows in raw form for the gate."""
REPORT_KINDS: tuple[str, ...] = ("validation", "gate")
MODEL_SUFFIX = ".tar.gz"
MAX_KEY_BYTES = 1024  # S3's limit
_UPLOAD_NAME = re.compile(r"[^\x00-\x1f\x7f]+")
_HEX = re.compile(r"[0-9a-f]{8,64}")


@dataclass(frozen=True)
class RawKey:
    """A parsed upload key: ``{prefix}{city}/{name}``."""

    city: str
    name: str
    key: str


def raw_key(city: str, name: str, *, prefix: str = RAW_PREFIX) -> str:
    """Return the key a user uploads ``name`` (a ``.csv`` file name) for ``city`` under."""
    key = f"{_prefix(prefix)}{validate_city_id(city)}/{name}"
    parse_raw_key(key, prefix=prefix)  # one definition of what is acceptable
    return key


def parse_raw_key(key: str, *, prefix: str = RAW_PREFIX) -> RawKey:
    """Parse an upload key ``{prefix}{city}/{name}.csv``.

    ``name`` may contain further ``/`` (``raw/Chicago_IL/2024/june.csv``); it must end in
    ``.csv`` (any case). The key is expected URL-decoded.

    Raises
    ------
    InvalidKey
        The key is outside ``prefix``, has no file name, or does not end in ``.csv``.
    InvalidCityId
        The city part is not a valid city id.
    """
    prefix = _prefix(prefix)
    if not key.startswith(prefix):
        raise InvalidKey(f"key {key!r} is not under {prefix!r}", field="key")
    rest = key[len(prefix) :]
    city, sep, name = rest.partition("/")
    if not sep or not name or name.endswith("/"):
        raise InvalidKey(
            f"key {key!r} must be {prefix}<city>/<name>.csv (a file inside a city folder)",
            field="key",
        )
    validate_city_id(city)
    if not name.lower().endswith(".csv") or len(name) <= 4:
        raise InvalidKey(f"upload {key!r} is not a .csv file", field="key")
    if _UPLOAD_NAME.fullmatch(name) is None or "//" in name:
        raise InvalidKey(f"upload name {name!r} contains control characters", field="key")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidKey("key is longer than S3's 1,024 bytes", field="key")
    return RawKey(city=city, name=name, key=key)


def input_key(city: str, run: str, name: str) -> str:
    """Return a run's own copy of its upload (``inputs/{city}/{run}/{name}``).

    onboard copies the very version it validated here, and the processing job reads
    this one object: a later upload to the same raw key, or a key that merely starts
    with it, never reaches the run. ``name`` is the upload's name under its city.
    """
    return f"{run_prefix(INPUTS_PREFIX, city, run)}{name}"


def processed_prefix(city: str, run: str, split: str) -> str:
    """Return the prefix of one processed split of a run (``processed/{city}/{run}/{split}/``)."""
    if split not in SPLITS:
        raise InvalidKey(f"unknown split {split!r}; expected one of {SPLITS}", field="split")
    return f"{run_prefix(PROCESSED_PREFIX, city, run)}{split}/"


def processed_key(city: str, run: str, split: str) -> str:
    """Return the one CSV object of a processed split (``.../{split}/{split}.csv``)."""
    return f"{processed_prefix(city, run, split)}{split}.csv"


def training_output_prefix(city: str, run: str) -> str:
    """Return the training job's ``OutputDataConfig.S3OutputPath`` prefix for a run."""
    return run_prefix(TRAINING_PREFIX, city, run)


def mme_key(city: str, version: str) -> str:
    """Return where the endpoint loads a city's version from (never overwritten)."""
    return f"{MME_PREFIX}{target_model(city, version)}"


def target_model(city: str, version: str) -> str:
    """Return the ``TargetModel`` of a city's version: ``{city}/{version}.tar.gz``."""
    return f"{validate_city_id(city)}/{validate_version(version)}{MODEL_SUFFIX}"


def parse_target_model(name: str) -> tuple[str, str]:
    """Parse ``{city}/{version}.tar.gz`` into ``(city, version)``.

    Raises
    ------
    InvalidKey, InvalidCityId, InvalidVersion
        When ``name`` is not a TargetModel this layout produces.
    """
    city, sep, file_name = name.partition("/")
    if not sep or not file_name.endswith(MODEL_SUFFIX):
        raise InvalidKey(
            f"TargetModel {name!r} must be <city>/<version>{MODEL_SUFFIX}", field="target_model"
        )
    version = file_name[: -len(MODEL_SUFFIX)]
    return validate_city_id(city), validate_version(version)


def parse_mme_key(key: str) -> tuple[str, str]:
    """Parse ``mme/{city}/{version}.tar.gz`` into ``(city, version)``."""
    if not key.startswith(MME_PREFIX):
        raise InvalidKey(f"key {key!r} is not under {MME_PREFIX!r}", field="key")
    return parse_target_model(key[len(MME_PREFIX) :])


def report_key(city: str, run: str, kind: str) -> str:
    """Return ``reports/{city}/{run}/{kind}.json`` (kind: ``validation`` or ``gate``)."""
    if kind not in REPORT_KINDS:
        raise InvalidKey(f"unknown report {kind!r}; expected one of {REPORT_KINDS}", field="kind")
    return f"{run_prefix(REPORTS_PREFIX, city, run)}{kind}.json"


def rejected_report_key(digest: str) -> str:
    """Return the report key of an upload whose key has no valid city id (by key hash)."""
    if _HEX.fullmatch(digest) is None:
        raise InvalidKey("rejected report name must be a lowercase hex digest", field="digest")
    return f"{REJECTED_PREFIX}{digest}.json"


def run_prefix(prefix: str, city: str, run: str) -> str:
    """Return ``{prefix}{city}/{run}/`` after validating both ids."""
    return f"{_prefix(prefix)}{validate_city_id(city)}/{validate_version(run)}/"


def parse_run_key(key: str, prefix: str) -> tuple[str, str, str]:
    """Parse ``{prefix}{city}/{run}/{rest}`` into ``(city, run, rest)``."""
    prefix = _prefix(prefix)
    if not key.startswith(prefix):
        raise InvalidKey(f"key {key!r} is not under {prefix!r}", field="key")
    parts = key[len(prefix) :].split("/", 2)
    if len(parts) != 3:
        raise InvalidKey(f"key {key!r} must be {prefix}<city>/<run>/...", field="key")
    return validate_city_id(parts[0]), validate_version(parts[1]), parts[2]


def s3_uri(bucket: str, key: str) -> str:
    """Return ``s3://{bucket}/{key}``."""
    return f"s3://{bucket}/{key}"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``."""
    if not uri.startswith("s3://"):
        raise InvalidKey(f"{uri!r} is not an s3:// URI", field="uri")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise InvalidKey(f"{uri!r} has no bucket", field="uri")
    return bucket, key


def _prefix(prefix: str) -> str:
    if not prefix or prefix.startswith("/") or not prefix.endswith("/"):
        raise InvalidKey(f"prefix {prefix!r} must be non-empty and end with '/'", field="prefix")
    return prefix
