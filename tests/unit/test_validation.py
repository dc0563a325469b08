"""The raw CSV contract (docs/design.md §3): valid uploads pass, and the malformed-upload
corpus is rejected with a precise report, never a crash."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from citymodels.validation import Limits, UploadReader, validate_upload
from tests.conftest import HEADER, raw_rows, upload

GOOD = raw_rows(60)


def report_for(data: bytes, **kwargs: object):
    return validate_upload(io.BytesIO(data), **kwargs)  # type: ignore[arg-type]


def test_valid_headerless_upload_is_accepted_with_its_hash(valid_upload: bytes) -> None:
    # GIVEN the notebook's headerless format WHEN validated
    report = report_for(valid_upload)
    # THEN it is accepted, every row counted, and the content hash is the file's
    import hashlib

    assert report.ok, report.summary()
    assert (report.rows_valid, report.rows_invalid, report.has_header) == (60, 0, False)
    assert report.sha256 == hashlib.sha256(valid_upload).hexdigest()


def test_header_in_any_order_and_case_is_accepted() -> None:
    # GIVEN a header with shuffled, lower-case names and rows in that order
    names = HEADER.split(",")
    order = [8, 0, 7, 1, 6, 2, 5, 3, 4]
    header = ",".join(names[i].lower() for i in order)
    lines = [",".join(line.split(",")[i] for i in order) for line in GOOD]
    reader = UploadReader(io.BytesIO(("\n".join([header, *lines]) + "\n").encode()))
    # WHEN read
    rows = list(reader)
    # THEN rows come back in the canonical order, with the right price
    assert reader.report.ok and reader.report.has_header
    assert rows[0].price == float(GOOD[0].split(",")[8])
    assert rows[0].features[0] == float(GOOD[0].split(",")[0])


def test_rows_are_streamed_from_chunks_of_any_size() -> None:
    # GIVEN the upload delivered 7 bytes at a time (as a network stream may)
    data = upload(GOOD)
    chunks: Iterator[bytes] = (data[i : i + 7] for i in range(0, len(data), 7))
    # WHEN validated THEN the result is the same as from one buffer
    report = validate_upload(chunks)
    assert report.ok and report.rows_valid == 60


# The malformed-upload corpus: (name, bytes, expected code, expected line or None, words).
BAD = GOOD[5]


def field(index: int, value: str) -> str:
    """BAD with field ``index`` set to ``value``."""
    fields = BAD.split(",")
    fields[index] = value
    return ",".join(fields)


CORPUS = [
    ("missing column", upload([*GOOD[:3], ",".join(BAD.split(",")[:8]), *GOOD[3:]]),
     "missing_columns", 4, "found 8"),
    ("extra column", upload([*GOOD[:9], BAD + ",7", *GOOD[9:]]), "extra_columns", 10, "found 10"),
    ("unparsable number", upload([*GOOD[:2], field(1, "big"), *GOOD]),
     "not_a_number", 3, "SQUARE_FEET is not a number: 'big'"),
    ("NaN", upload([field(4, "NaN"), *GOOD]), "not_finite", 1,
     "LOT_ACRES must be finite"),
    ("infinity", upload([*GOOD, field(1, "inf")]), "not_finite", 61,
     "SQUARE_FEET must be finite"),
    ("zero price", upload([*GOOD[:1], field(8, "0"), *GOOD]),
     "price_not_positive", 2, "PRICE must be a number greater than 0"),
    ("negative price", upload([*GOOD, field(8, "-12000")]),
     "price_not_positive", 61, "got -12000"),
    ("flag not y/n", upload([*GOOD[:4], ",".join([*BAD.split(",")[:6], "yes", "n", "1"]), *GOOD]),
     "bad_flag", 5, "FRONT_PORCH must be 'y' or 'n', got 'yes'"),
    ("empty file", b"", "empty_file", None, "no data rows"),
    ("header alone", (HEADER + "\n").encode(), "header_only", None, "header but no data"),
    ("bad header", upload(GOOD, header=True).replace(b"_BUILT", b"").replace(b"PRICE", b"COST"),
     "bad_header", None, "unknown column(s) 'YEAR', 'COST'"),
    ("quoted field broken", upload([*GOOD[:6], BAD.replace(",", ',"', 1), *GOOD]), "bad_quoting", 7,
     "unbalanced quotes"),
    ("non-UTF-8 bytes", upload(GOOD[:8]) + b"1990,2000,3,2,1,1,\xff,n,300000\n" + upload(GOOD),
     "not_utf8", 9, "not UTF-8 (0xff)"),
    ("enormous line", upload(GOOD[:2]) + b"9" * 200_000 + b"\n" + upload(GOOD), "line_too_long", 3,
     "200,000 bytes long"),
    ("too few rows", upload(GOOD[:12]), "too_few_rows", None, "12 rows; at least 50"),
    ("fractional year", upload([field(0, "1995.5"), *GOOD]),
     "out_of_range", 1, "YEAR_BUILT must be a whole number"),
    ("negative area", upload([field(1, "-1500"), *GOOD]),
     "out_of_range", 1, "SQUARE_FEET must be a number greater than 0"),
    ("underscore digits", upload([field(8, "300_000"), *GOOD]),
     "not_a_number", 1, "PRICE is not a number: '300_000'"),
    ("empty value", upload([field(2, ""), *GOOD]), "empty_value", 1,
     "NUM_BEDROOMS is empty"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("code", "data", "line", "words"),
    [pytest.param(c, d, ln, w, id=name) for name, d, c, ln, w in CORPUS],
)
def test_malformed_upload_is_rejected_with_a_precise_report(
    code: str, data: bytes, line: int | None, words: str
) -> None:
    # GIVEN a malformed upload WHEN validated
    report = report_for(data)
    # THEN it is rejected, and the report names the reason (and the line, for row problems)
    assert not report.ok
    matching = [p for p in report.problems if p.code == code]
    assert matching, f"expected {code}, got {[p.to_dict() for p in report.problems]}"
    assert matching[0].line == line
    assert words in matching[0].message
    assert words in report.to_dict()["summary"] or matching[0].to_dict() in (
        report.to_dict()["row_problems"] + report.to_dict()["file_problems"]
    )


def test_corpus_has_at_least_fifteen_kinds_of_malformed_upload() -> None:
    assert len({code for _, _, code, _, _ in CORPUS}) >= 15


def test_bom_and_crlf_are_accepted_not_reported() -> None:
    # GIVEN a spreadsheet export: UTF-8 BOM, header, CRLF line ends
    data = b"\xef\xbb\xbf" + upload(GOOD, header=True, newline="\r\n")
    # WHEN validated THEN it is accepted as a headed file with every row
    report = report_for(data)
    assert report.ok, report.summary()
    assert report.has_header and report.rows_valid == 60


def test_quoted_fields_and_upper_case_flags_are_accepted() -> None:
    lines = [",".join(f'"{v}"' for v in line.split(",")).replace('"y"', '"Y"') for line in GOOD]
    report = report_for(upload(lines))
    assert report.ok, report.summary()


def test_oversized_upload_is_rejected_before_reading() -> None:
    # GIVEN an event saying the object is 101 MB, and a stream that must not be read
    class Unreadable(io.RawIOBase):
        def read(self, size: int = -1) -> bytes:
            raise AssertionError("the stream was read")

    # WHEN validated with its size THEN it is rejected unread
    report = validate_upload(Unreadable(), size=101 * 1024 * 1024)  # type: ignore[arg-type]
    assert [p.code for p in report.file_problems] == ["too_large"]
    assert "105,906,176 bytes" in report.summary()


def test_upload_growing_past_the_limit_is_rejected_while_streaming() -> None:
    data = upload(GOOD * 10)
    report = report_for(data, limits=Limits(max_bytes=len(data) // 2))
    assert not report.ok
    assert report.file_problems[0].code == "too_large"


def test_enormous_line_does_not_hold_memory() -> None:
    # GIVEN a 50 MB line without a newline, arriving in 1 MB chunks
    chunk = b"7" * (1024 * 1024)
    chunks = iter([*(chunk for _ in range(50)), b"\n" + upload(GOOD)])
    import tracemalloc

    tracemalloc.start()
    report = validate_upload(chunks)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # THEN it is reported and skipped, the good rows still counted, with peak memory far
    # below the line's size
    assert report.problems[0].code == "line_too_long" and report.rows_valid == 60
    assert peak < 8 * 1024 * 1024


def test_listing_is_capped_and_the_rest_counted() -> None:
    bad = [line.replace(",y,", ",maybe,").replace(",n,", ",maybe,", 1) for line in GOOD * 5]
    report = report_for(upload(bad), limits=Limits(max_listed_problems=10))
    body = report.to_dict()
    assert len(body["row_problems"]) == 10
    assert body["row_problems_not_listed"] > 0
    assert body["rows_invalid"] == 300


def test_reader_can_be_consumed_only_once(valid_upload: bytes) -> None:
    reader = UploadReader(io.BytesIO(valid_upload))
    list(reader)
    with pytest.raises(RuntimeError, match="only once"):
        iter(reader)


@pytest.mark.parametrize("header", [True, False])
@pytest.mark.parametrize(("delimiter", "named"), [(";", "';'"), ("\t", "tab")])
def test_a_file_separated_by_semicolons_or_tabs_is_named_so(
    header: bool, delimiter: str, named: str
) -> None:
    # GIVEN a spreadsheet export with another separator, with or without a header
    data = upload(GOOD, header=header).decode().replace(",", delimiter).encode()
    # WHEN validated THEN the one problem says which separator, not "unknown column"
    report = report_for(data)
    assert not report.ok
    (problem,) = report.file_problems
    assert problem.code == "bad_delimiter"
    assert f"separated by {named}, not commas" in problem.message


def lazy_upload(first: bytes, line: bytes, total: int = 100 * 1024 * 1024) -> Iterator[bytes]:
    """``first``, then ``line`` repeated up to ``total`` bytes, in 1 MB chunks, made as read."""
    yield first
    block = line * (1024 * 1024 // len(line))
    sent = len(first)
    while sent < total:
        yield block
        sent += len(block)


@pytest.mark.parametrize(
    ("first", "line"),
    [
        (b"", b",,,,,,,,\n"),  # a CSV-looking file of empty fields
        (upload(GOOD[:1]), b"1999,not a number,3,2,1,1,y,n,12\n"),  # one good row, then junk
        (upload(GOOD[:1]), b"\x00\xff\xfe garbage \x80\n"),  # binary after a good row
    ],
)
def test_a_100_mb_garbage_upload_is_rejected_in_bounded_time(first: bytes, line: bytes) -> None:
    # GIVEN 100 MB that is clearly not the expected CSV (each of these took minutes to
    # read to the end: ~140 s here for the first, and the onboard function's timeout is
    # 300 s)
    import time

    started = time.monotonic()
    # WHEN validated
    report = validate_upload(lazy_upload(first, line))
    elapsed = time.monotonic() - started
    # THEN it stops early, well within a second, and the report says so and why
    assert elapsed < 2.0, elapsed
    assert not report.ok and report.stopped_early and not report.complete
    assert [p.code for p in report.file_problems] == ["too_many_problems"]
    assert "stopped early" in report.summary()
    assert report.rows_invalid == Limits().max_invalid_rows
    assert report.bytes_read < 5 * 1024 * 1024
    body = report.to_dict()
    assert body["stopped_early"] is True and len(body["row_problems"]) == 100


def test_a_file_that_takes_too_long_is_stopped_at_the_time_bound() -> None:
    # GIVEN 100 MB of blank lines (nothing invalid to count, ~50 s to read here) and a
    # clock that advances a second at each look
    ticks = iter(range(10**9))
    # WHEN validated with a 30 s bound
    report = validate_upload(
        lazy_upload(b"", b"\n"), limits=Limits(max_seconds=30), clock=lambda: float(next(ticks))
    )
    # THEN it stops early, with the reason, after reading a small part of the file
    assert [p.code for p in report.file_problems] == ["too_slow"]
    assert report.stopped_early and not report.ok
    assert "longer than 30 s" in report.summary()
    assert report.lines_read < 200_000


def test_the_onboard_bound_is_far_under_the_functions_timeout() -> None:
    from pathlib import Path

    from citymodels.validation import ONBOARD_LIMITS
    from citymodels_devkit.local.template import load_yaml

    template = load_yaml(Path(__file__).resolve().parents[2] / "template.yaml")
    timeout = template["Resources"]["OnboardFunction"]["Properties"]["Timeout"]
    assert ONBOARD_LIMITS.max_seconds is not None
    assert ONBOARD_LIMITS.max_seconds <= timeout / 2
    # and the processing job (DEFAULT_LIMITS) never rejects a file for time
    assert Limits().max_seconds is None
