"""The contracts of docs/design.md §3 as code: city ids, S3 keys, versions, job names, splits."""

from __future__ import annotations

import random
import re
import string
from datetime import UTC, datetime, timedelta

import pytest

from citymodels import layout
from citymodels.cities import is_valid_city_id, validate_city_id
from citymodels.errors import (
    InvalidCityId,
    InvalidJobName,
    InvalidKey,
    InvalidStackName,
    InvalidVersion,
)
from citymodels.jobs import (
    MAX_JOB_NAME_LENGTH,
    MAX_STACK_LENGTH,
    job_name,
    job_name_prefix,
    parse_job_name,
)
from citymodels.splits import split_indices, split_sizes
from citymodels.versions import is_newer, mint_version, validate_version, version_time

SHA = "ab" * 32
SAGEMAKER_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")

# -- city ids ------------------------------------------------------------------------


@pytest.mark.parametrize("city", ["NewYork_NY", "a", "San-Diego_CA", "X" * 64, "Z9_-"])
def test_valid_city_ids(city: str) -> None:
    assert validate_city_id(city) == city and is_valid_city_id(city)


@pytest.mark.parametrize(
    ("city", "words"),
    [
        ("../etc", "must start with a letter"),
        ("NY/../../mme", "contains '/' at position 2"),
        ("New York", "contains ' ' at position 3"),
        ("Zürich", "contains 'ü' at position 1"),
        ("", "empty"),
        ("X" * 65, "65 characters long; at most 64"),
        ("_hidden", "must start with a letter"),
        ("NewYork\n", "contains '\\n' at position 7"),
        ("Münster%2F", "contains 'ü'"),
    ],
)
def test_invalid_city_ids_are_rejected_with_the_reason(city: str, words: str) -> None:
    with pytest.raises(InvalidCityId) as err:
        validate_city_id(city)
    assert words in str(err.value)
    assert err.value.to_dict()["code"] == "invalid_city"
    assert not is_valid_city_id(city)


def test_city_id_must_be_a_string() -> None:
    with pytest.raises(InvalidCityId, match="must be a string"):
        validate_city_id(42)


# -- S3 layout -----------------------------------------------------------------------

VERSION = "20261125T004255123Z-0062A1B2C3D4E5F60000000000000000"


def test_every_prefix_is_built_as_the_design_says() -> None:
    assert layout.raw_key("NewYork_NY", "houses.csv") == "raw/NewYork_NY/houses.csv"
    assert layout.processed_key("NewYork_NY", VERSION, "train") == (
        f"processed/NewYork_NY/{VERSION}/train/train.csv"
    )
    assert layout.processed_prefix("NewYork_NY", VERSION, "test-raw") == (
        f"processed/NewYork_NY/{VERSION}/test-raw/"
    )
    assert layout.training_output_prefix("NewYork_NY", VERSION) == f"training/NewYork_NY/{VERSION}/"
    assert layout.mme_key("NewYork_NY", VERSION) == f"mme/NewYork_NY/{VERSION}.tar.gz"
    assert layout.target_model("NewYork_NY", VERSION) == f"NewYork_NY/{VERSION}.tar.gz"
    assert (
        layout.report_key("NewYork_NY", VERSION, "gate")
        == f"reports/NewYork_NY/{VERSION}/gate.json"
    )
    assert layout.rejected_report_key("0a" * 32) == f"reports/_rejected/{'0a' * 32}.json"


def test_keys_round_trip_through_their_parsers() -> None:
    assert layout.parse_raw_key("raw/Chicago_IL/2024/june.CSV") == layout.RawKey(
        "Chicago_IL", "2024/june.CSV", "raw/Chicago_IL/2024/june.CSV"
    )
    assert layout.parse_mme_key(layout.mme_key("Chicago_IL", VERSION)) == ("Chicago_IL", VERSION)
    assert layout.parse_target_model(f"Chicago_IL/{VERSION}.tar.gz") == ("Chicago_IL", VERSION)
    key = layout.processed_key("Chicago_IL", VERSION, "validation")
    assert layout.parse_run_key(key, "processed/") == (
        "Chicago_IL",
        VERSION,
        "validation/validation.csv",
    )
    assert layout.parse_s3_uri(layout.s3_uri("bkt", "a/b")) == ("bkt", "a/b")


def test_raw_prefix_is_configurable() -> None:
    assert (
        layout.parse_raw_key("incoming/Houston_TX/x.csv", prefix="incoming/").city == "Houston_TX"
    )
    with pytest.raises(InvalidKey, match="not under 'incoming/'"):
        layout.parse_raw_key("raw/Houston_TX/x.csv", prefix="incoming/")


@pytest.mark.parametrize(
    ("key", "error", "words"),
    [
        ("raw/../mme/x.csv", InvalidCityId, "must start with a letter"),
        ("raw/New York/x.csv", InvalidCityId, "contains ' '"),
        ("raw/Houston_TX.csv", InvalidKey, "a file inside a city folder"),
        ("raw/Houston_TX/", InvalidKey, "a file inside a city folder"),
        ("raw/Houston_TX/notes.txt", InvalidKey, "not a .csv file"),
        ("processed/Houston_TX/x.csv", InvalidKey, "not under 'raw/'"),
        ("raw/Houston_TX/a\x00.csv", InvalidKey, "control characters"),
    ],
)
def test_bad_upload_keys_are_rejected(key: str, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=re.escape(words)):
        layout.parse_raw_key(key)


@pytest.mark.parametrize(
    "name",
    [
        "NewYork_NY/latest.tar.gz",
        "../x/" + VERSION + ".tar.gz",
        f"NewYork_NY/{VERSION}",
        "NewYork_NY",
    ],
)
def test_bad_target_models_are_rejected(name: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each is a ValueError subclass with its own text
        layout.parse_target_model(name)


def test_builders_refuse_ids_that_would_escape_their_prefix() -> None:
    with pytest.raises(InvalidCityId):
        layout.mme_key("../raw", VERSION)
    with pytest.raises(InvalidVersion):
        layout.mme_key("NewYork_NY", "../../raw/x")
    with pytest.raises(InvalidKey, match="unknown split"):
        layout.processed_prefix("NewYork_NY", VERSION, "holdout")


# -- versions ------------------------------------------------------------------------


def test_version_is_minted_from_time_and_sequencer() -> None:
    version = mint_version("2026-11-25T00:42:55Z", "0062a1b2c3d4e5f6")
    assert version == "20261125T004255000Z-0062A1B2C3D4E5F60000000000000000"
    assert validate_version(version) == version
    assert version_time(version) == datetime(2026, 11, 25, 0, 42, 55, tzinfo=UTC)


def test_versions_sort_in_upload_order_whatever_the_sequencer_length() -> None:
    # GIVEN uploads at increasing times, and for one key increasing sequencers of
    # different lengths (S3 compares them right-padded with zeros)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    rng = random.Random(3)
    uploads = []
    for i in range(200):
        when = base + timedelta(milliseconds=rng.randint(0, 10**9))
        uploads.append((when, f"{i:04X}"))
    same_time = [(base, "0055AED6DCD90281E5"), (base, "0055AED6DCD90281E6"), (base, "0056")]
    # WHEN minted THEN string order is upload order
    minted = [mint_version(t, s) for t, s in uploads + same_time]
    expected = sorted(uploads + same_time, key=lambda u: (u[0], u[1].ljust(32, "0")))
    assert sorted(minted) == [mint_version(t, s) for t, s in expected]
    assert is_newer(minted[-1], minted[-2]) and not is_newer(minted[-2], minted[-1])
    assert is_newer(minted[0], None)


def test_event_time_offsets_are_normalised_to_utc() -> None:
    assert mint_version("2026-11-25T09:42:55.5+09:00", "1") == mint_version(
        datetime(2026, 11, 25, 0, 42, 55, 500000, tzinfo=UTC), "1"
    )


@pytest.mark.parametrize(
    ("time", "sequencer", "words"),
    [
        ("2026-11-25T00:42:55", "AB", "no time zone"),
        ("yesterday", "AB", "not ISO 8601"),
        ("2026-11-25T00:42:55Z", "", "1 to 32 hex digits"),
        ("2026-11-25T00:42:55Z", "XYZ", "1 to 32 hex digits"),
        ("2026-11-25T00:42:55Z", "A" * 33, "1 to 32 hex digits"),
    ],
)
def test_bad_version_inputs_are_rejected(time: str, sequencer: str, words: str) -> None:
    with pytest.raises(InvalidVersion, match=words):
        mint_version(time, sequencer)


# -- job names -----------------------------------------------------------------------


def test_job_names_are_deterministic_stack_scoped_and_valid_for_sagemaker() -> None:
    name = job_name("citymodels-dev", "NewYork_NY", SHA, 1)
    assert name == job_name("citymodels-dev", "NewYork_NY", SHA, 1)  # an event delivered twice
    assert name.startswith(job_name_prefix("citymodels-dev"))
    assert SAGEMAKER_NAME.match(name) and len(name) <= MAX_JOB_NAME_LENGTH
    assert parse_job_name(name, "citymodels-dev") is not None
    assert str(parse_job_name(name, "citymodels-dev")) == name


def test_job_names_differ_by_city_content_attempt_and_stack() -> None:
    names = {
        job_name("s", "NewYork_NY", SHA, 1),
        job_name("s", "NewYork_NY", SHA, 2),
        job_name("s", "Chicago_IL", SHA, 1),
        job_name("s", "NewYork_NY", "cd" * 32, 1),
        job_name("t", "NewYork_NY", SHA, 1),
    }
    assert len(names) == 5


def test_long_inputs_still_fit_sagemaker_limits() -> None:
    stack = "s" + "-x" * ((MAX_STACK_LENGTH - 1) // 2)
    name = job_name(stack, "C" * 64, SHA, 999)
    assert len(name) <= MAX_JOB_NAME_LENGTH and SAGEMAKER_NAME.match(name)


def test_job_names_are_collision_resistant_over_many_uploads() -> None:
    rng = random.Random(5)
    cities = ["".join(rng.choices(string.ascii_letters, k=8)) for _ in range(200)]
    names = {job_name("prod", c, f"{rng.getrandbits(256):064x}") for c in cities for _ in range(50)}
    assert len(names) == 200 * 50


def test_another_stack_whose_name_extends_ours_is_not_ours() -> None:
    # EventBridge's prefix "cm-prod-" also matches the jobs of stack "prod-eu"
    theirs = job_name("prod-eu", "NewYork_NY", SHA)
    assert theirs.startswith(job_name_prefix("prod"))
    assert parse_job_name(theirs, "prod") is None
    assert parse_job_name(theirs, "prod-eu") is not None


@pytest.mark.parametrize(
    ("stack", "words"),
    [("9lives", "start with a letter"), ("a_b", "only letters"), ("x" * 40, "at most 35")],
)
def test_stack_names_that_cannot_scope_jobs_are_rejected(stack: str, words: str) -> None:
    with pytest.raises(InvalidStackName, match=words):
        job_name_prefix(stack)


@pytest.mark.parametrize(("sha", "attempt"), [("nothex", 1), (SHA, 0), (SHA, 1000), (SHA, True)])
def test_bad_job_inputs_are_rejected(sha: str, attempt: int) -> None:
    with pytest.raises(InvalidJobName):
        job_name("prod", "NewYork_NY", sha, attempt)


# -- splits --------------------------------------------------------------------------


def test_split_sizes_follow_the_notebook() -> None:
    assert split_sizes(1000) == (630, 270, 100)
    assert split_sizes(50) == (31, 14, 5)


def test_same_run_splits_the_same_way_and_splits_partition_the_rows() -> None:
    a, b = split_indices(1000, VERSION), split_indices(1000, VERSION)
    assert a == b
    assert sorted(a.train + a.validation + a.test) == list(range(1000))
    assert len(set(a.test) & set(a.train)) == 0


def test_different_runs_split_differently() -> None:
    other = VERSION.replace("0062", "0063")
    assert split_indices(1000, VERSION).test != split_indices(1000, other).test
