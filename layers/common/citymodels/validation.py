"""Streaming validation of a raw CSV upload (docs/design.md §3), with a structured report.

This runs in the ``onboard`` Lambda function and in the processing job, so it uses the
``csv`` module on a byte stream: memory stays bounded whatever the upload holds (an
enormous line is measured and skipped, never read whole), and the report names every
bad row with the reason, up to a listing limit, with counts beyond it.

Typical use::

    reader = UploadReader(stream, size=event_size)
    for row in reader:          # valid rows only, parsed
        ...
    report = reader.report      # complete once the stream is consumed

or simply ``report = validate_upload(stream)``.
"""

from __future__ import annotations

import csv
import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Union

from citymodels.errors import InvalidRecord
from citymodels.schema import COLUMNS, FEATURES, FLAG_FEATURES, LABEL, parse_flag, parse_number

MB = 1024 * 1024
UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Limits:
    """Limits of one upload.

    Attributes
    ----------
    max_bytes
        Largest accepted upload (100 MB).
    max_line_bytes
        Longest accepted line (64 KiB); longer lines are reported and skipped unread.
    min_rows
        Fewest valid data rows a model is trained on.
    max_rows
        Most data rows read (a guard for files of tiny lines).
    max_listed_problems
        How many row problems the report lists one by one; the rest are counted.
    max_invalid_rows
        After this many invalid rows the upload is clearly not this format (or not CSV
        at all): validation stops early rather than reading on to say so a million times.
    max_seconds
        When given, validation stops early after this long (checked every few thousand
        lines), so a pathological file is rejected with a reason well within the
        function's timeout instead of timing it out. None: no time bound.
    """

    max_bytes: int = 100 * MB
    max_line_bytes: int = 64 * 1024
    min_rows: int = 50
    max_rows: int = 5_000_000
    max_listed_problems: int = 100
    max_invalid_rows: int = 1000
    max_seconds: float | None = None


DEFAULT_LIMITS = Limits()

ONBOARD_LIMITS = Limits(max_seconds=120.0)
"""The onboard function's: a valid 100 MB upload validates in ~25 s here, and the
function's timeout is 300 s (template.yaml), so 120 s rejects only a pathological file."""

_CLOCK_EVERY = 4096
"""Lines between two looks at the clock (a look costs more than a blank line)."""


@dataclass(frozen=True)
class Problem:
    """One reason an upload, or one of its rows, is not accepted.

    Attributes
    ----------
    code
        Stable machine-readable reason (``not_a_number``, ``missing_columns`` ...).
    message
        The reason for a person.
    line
        1-based physical line number in the file (``None`` for whole-file problems).
    column
        The column concerned, when there is one.
    """

    code: str
    message: str
    line: int | None = None
    column: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the problem as a JSON-ready mapping, without empty entries."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.line is not None:
            body["line"] = self.line
        if self.column is not None:
            body["column"] = self.column
        return body

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return where + self.message


@dataclass
class ValidationReport:
    """What validation found in one upload.

    ``ok`` is true only when the whole file was read, every data row is valid and there
    are at least ``Limits.min_rows`` of them: an upload is a full snapshot of a city's
    data, so a model is never trained on a silently reduced subset.
    """

    has_header: bool = False
    columns: list[str] = field(default_factory=lambda: list(COLUMNS))
    bytes_read: int = 0
    lines_read: int = 0
    rows_total: int = 0
    rows_valid: int = 0
    rows_invalid: int = 0
    file_problems: list[Problem] = field(default_factory=list)
    row_problems: list[Problem] = field(default_factory=list)
    problem_counts: dict[str, int] = field(default_factory=dict)
    sha256: str = ""
    complete: bool = False
    stopped_early: bool = False

    @property
    def ok(self) -> bool:
        """Whether the upload is accepted."""
        return self.complete and not self.file_problems and self.rows_invalid == 0

    @property
    def problems(self) -> list[Problem]:
        """Whole-file problems first, then the listed row problems."""
        return self.file_problems + self.row_problems

    def summary(self) -> str:
        """Return one line for a person: accepted, or why not."""
        if self.ok:
            header = "with header" if self.has_header else "headerless"
            return f"valid: {self.rows_valid} rows ({header})"
        reasons = [str(p) for p in self.file_problems]
        if self.rows_invalid:
            first = self.row_problems[0] if self.row_problems else None
            detail = f"; first: {first}" if first else ""
            reasons.append(f"{self.rows_invalid} invalid row(s) of {self.rows_total}{detail}")
        return "rejected: " + "; ".join(reasons)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as written to ``reports/{city}/{run}/validation.json``."""
        listed = len(self.row_problems)
        total_row_problems = sum(
            n for code, n in self.problem_counts.items() if not _is_file_code(code)
        )
        return {
            "ok": self.ok,
            "summary": self.summary(),
            "has_header": self.has_header,
            "columns": self.columns,
            "bytes_read": self.bytes_read,
            "lines_read": self.lines_read,
            "rows_total": self.rows_total,
            "rows_valid": self.rows_valid,
            "rows_invalid": self.rows_invalid,
            "sha256": self.sha256,
            "complete": self.complete,
            "stopped_early": self.stopped_early,
            "file_problems": [p.to_dict() for p in self.file_problems],
            "row_problems": [p.to_dict() for p in self.row_problems],
            "row_problems_not_listed": max(0, total_row_problems - listed),
            "problem_counts": dict(sorted(self.problem_counts.items())),
        }


_FILE_CODES = frozenset(
    {
        "empty_file",
        "header_only",
        "too_few_rows",
        "too_large",
        "too_many_rows",
        "bad_header",
        "bad_delimiter",
        "too_many_problems",
        "too_slow",
    }
)

OTHER_DELIMITERS = (";", "\t", "|")
"""Separators spreadsheets export instead of commas: named when a file uses one."""


def _is_file_code(code: str) -> bool:
    return code in _FILE_CODES


@dataclass(frozen=True)
class ValidRow:
    """A valid data row: its line number, the eight feature values and the price.

    Numeric features are floats and flags are ``'y'``/``'n'``, in :data:`FEATURES` order.
    """

    line: int
    features: tuple[float | str, ...]
    price: float


ByteSource = Union[BinaryIO, Iterable[bytes]]


class _LineSource:
    """Bounded-memory physical lines from an iterable of byte chunks."""

    def __init__(self, chunks: Iterable[bytes], max_line_bytes: int) -> None:
        self._max = max_line_bytes
        self._chunks = iter(chunks)
        self.bytes_read = 0

    def _next(self) -> bytes | None:
        for chunk in self._chunks:
            if chunk:
                self.bytes_read += len(chunk)
                return chunk
        return None

    def lines(self) -> Iterator[tuple[bytes | None, int]]:
        """Yield ``(line_without_newline, length)``; ``line`` is None for an overlong line.

        Lines are cut out of the current chunk by offset (no re-copying of the buffer per
        line); an overlong line is consumed chunk by chunk and discarded, so memory stays
        bounded by one chunk plus one line. A ``\\r`` before the newline does not count
        towards the limit.
        """
        limit = self._max + 1
        buf, pos = b"", 0
        while True:
            newline = buf.find(b"\n", pos)
            if newline >= 0:
                length = newline - pos
                yield (buf[pos:newline] if length <= limit else None), length
                pos = newline + 1
                continue
            if len(buf) - pos > limit:
                length = len(buf) - pos
                while True:
                    chunk = self._next()
                    if chunk is None:
                        yield None, length
                        return
                    newline = chunk.find(b"\n")
                    if newline >= 0:
                        length += newline
                        buf, pos = chunk, newline + 1
                        break
                    length += len(chunk)
                yield None, length
                continue
            chunk = self._next()
            if chunk is None:
                if pos < len(buf):
                    yield buf[pos:], len(buf) - pos
                return
            buf, pos = buf[pos:] + chunk, 0


class UploadReader:
    """Iterate the valid rows of an upload while building its :class:`ValidationReport`.

    Parameters
    ----------
    source
        A binary file object (e.g. a boto3 ``StreamingBody``) or an iterable of byte chunks.
    size
        The object's size when known in advance (from the S3 event): an upload over the
        limit is rejected without reading a byte.
    limits
        The limits to apply.
    clock
        Monotonic seconds, for ``limits.max_seconds``; injectable for tests.
    """

    def __init__(
        self,
        source: ByteSource,
        *,
        size: int | None = None,
        limits: Limits = DEFAULT_LIMITS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._size = size
        self.limits = limits
        self._clock = clock
        self.report = ValidationReport()
        self._consumed = False

    def __iter__(self) -> Iterator[ValidRow]:
        if self._consumed:
            raise RuntimeError("an UploadReader can be iterated only once")
        self._consumed = True
        return self._rows()

    # -- internals -------------------------------------------------------------------

    def _file_problem(self, code: str, message: str) -> None:
        self.report.file_problems.append(Problem(code, message))
        self.report.problem_counts[code] = self.report.problem_counts.get(code, 0) + 1

    def _row_problem(self, code: str, message: str, line: int, column: str | None) -> None:
        self.report.problem_counts[code] = self.report.problem_counts.get(code, 0) + 1
        if len(self.report.row_problems) < self.limits.max_listed_problems:
            self.report.row_problems.append(Problem(code, message, line, column))

    def _stop_early(self, code: str, message: str, line_no: int, bytes_read: int) -> None:
        self._file_problem(
            code,
            f"validation stopped early at line {line_no:,} ({bytes_read:,} bytes read): {message}",
        )
        self.report.bytes_read = bytes_read
        self.report.stopped_early = True

    def _rows(self) -> Iterator[ValidRow]:
        report, limits = self.report, self.limits
        deadline = None if limits.max_seconds is None else self._clock() + limits.max_seconds
        if self._size is not None and self._size > limits.max_bytes:
            self._file_problem(
                "too_large",
                f"the file is {self._size:,} bytes; at most {limits.max_bytes:,} are accepted",
            )
            report.complete = True
            return
        digest = hashlib.sha256()
        source = _LineSource(_hashing(self._source, digest), limits.max_line_bytes)
        order: list[int] | None = None  # raw column index for each of COLUMNS
        line_no = 0
        for raw, length in source.lines():
            line_no += 1
            report.lines_read = line_no
            if report.rows_invalid >= limits.max_invalid_rows:
                self._stop_early(
                    "too_many_problems",
                    f"{report.rows_invalid:,} invalid rows; this is not the expected CSV "
                    "(the listed problems show why)",
                    line_no - 1,
                    source.bytes_read,
                )
                return
            if deadline is not None and line_no % _CLOCK_EVERY == 0 and self._clock() > deadline:
                self._stop_early(
                    "too_slow",
                    f"validation takes longer than {limits.max_seconds:g} s; a valid upload "
                    "of the largest size takes far less",
                    line_no,
                    source.bytes_read,
                )
                return
            if source.bytes_read > limits.max_bytes:
                self._file_problem(
                    "too_large", f"the file is larger than {limits.max_bytes:,} bytes"
                )
                report.bytes_read = source.bytes_read
                return
            if raw is None:
                report.rows_total += 1
                report.rows_invalid += 1
                self._row_problem(
                    "line_too_long",
                    f"line is {length:,} bytes long; at most {limits.max_line_bytes:,} are "
                    "accepted (skipped unread)",
                    line_no,
                    None,
                )
                continue
            if line_no == 1 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM) :]  # spreadsheets write a BOM; it is not data
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                report.rows_total += 1
                report.rows_invalid += 1
                self._row_problem(
                    "not_utf8",
                    f"byte {err.start + 1} of the line is not UTF-8 (0x{raw[err.start]:02x})",
                    line_no,
                    None,
                )
                continue
            if not text.strip():
                continue  # blank lines carry nothing
            fields = _split(text)
            if fields is None:
                report.rows_total += 1
                report.rows_invalid += 1
                self._row_problem(
                    "bad_quoting", "unbalanced quotes (a field cannot span lines)", line_no, None
                )
                continue
            if order is None:
                order = self._read_header(fields, line_no)
                if order is None:  # the header itself is unusable
                    report.bytes_read = source.bytes_read
                    report.complete = True
                    return
                if report.has_header:
                    continue
            report.rows_total += 1
            if report.rows_total > limits.max_rows:
                self._file_problem(
                    "too_many_rows", f"more than {limits.max_rows:,} rows; split the file"
                )
                report.bytes_read = source.bytes_read
                return
            row = self._parse_row(fields, order, line_no)
            if row is None:
                report.rows_invalid += 1
            else:
                report.rows_valid += 1
                yield row
        report.bytes_read = source.bytes_read
        report.sha256 = digest.hexdigest()
        report.complete = True
        if report.rows_total == 0:
            if report.has_header:
                self._file_problem("header_only", "the file has a header but no data rows")
            else:
                self._file_problem("empty_file", "the file has no data rows")
        elif report.rows_valid < limits.min_rows and report.rows_invalid == 0:
            self._file_problem(
                "too_few_rows",
                f"{report.rows_valid} rows; at least {limits.min_rows} are needed to train",
            )

    def _read_header(self, fields: list[str], line_no: int) -> list[int] | None:
        """Decide header or data from the first line; return the column order."""
        if len(fields) == 1:
            # one field holding the whole line: another separator, not unknown columns
            for delimiter in OTHER_DELIMITERS:
                if len(fields[0].split(delimiter)) >= len(COLUMNS) - 1:
                    shown = "tab" if delimiter == "\t" else repr(delimiter)
                    self._file_problem(
                        "bad_delimiter",
                        f"line {line_no}: the fields are separated by {shown}, not commas; "
                        "save the file as comma-separated CSV",
                    )
                    return None
        names = [f.strip().strip('"').upper() for f in fields]
        looks_like_header = all(n and not _looks_numeric(n) for n in names)
        if not looks_like_header:
            return list(range(len(COLUMNS)))
        self.report.has_header = True
        problems = []
        unknown = [f.strip() for f, n in zip(fields, names) if n not in COLUMNS]
        duplicated = sorted({n for n in names if n in COLUMNS and names.count(n) > 1})
        missing = [c for c in COLUMNS if c not in names]
        if unknown:
            problems.append(f"unknown column(s) {', '.join(repr(u) for u in unknown)}")
        if duplicated:
            problems.append(f"duplicated column(s) {', '.join(duplicated)}")
        if missing:
            problems.append(f"missing column(s) {', '.join(missing)}")
        if problems:
            self._file_problem(
                "bad_header",
                f"line {line_no} (header): "
                + "; ".join(problems)
                + f". Expected the columns {', '.join(COLUMNS)} (any order, any case).",
            )
            return None
        self.report.columns = names
        return [names.index(c) for c in COLUMNS]

    def _parse_row(self, fields: list[str], order: list[int], line_no: int) -> ValidRow | None:
        if len(fields) != len(COLUMNS):
            code = "missing_columns" if len(fields) < len(COLUMNS) else "extra_columns"
            self._row_problem(
                code,
                f"expected {len(COLUMNS)} fields ({', '.join(self.report.columns)}), "
                f"found {len(fields)}",
                line_no,
                None,
            )
            return None
        values: list[float | str] = []
        ok = True
        for index, column in zip(order, FEATURES):
            try:
                if column in FLAG_FEATURES:
                    values.append(parse_flag(column, fields[index]))
                else:
                    values.append(parse_number(column, fields[index]))
            except InvalidRecord as err:
                ok = False
                self._row_problem(_code_for(column, fields[index]), err.message, line_no, column)
        try:
            price = parse_number(LABEL, fields[order[len(FEATURES)]])
        except InvalidRecord as err:
            ok = False
            price = 0.0
            self._row_problem(
                _code_for(LABEL, fields[order[len(FEATURES)]]), err.message, line_no, LABEL
            )
        return ValidRow(line_no, tuple(values), price) if ok else None


def _hashing(source: ByteSource, digest: Any) -> Iterator[bytes]:
    chunks: Iterable[bytes] = source
    if hasattr(source, "read"):  # a file object, e.g. boto3's StreamingBody
        chunks = iter(lambda: source.read(256 * 1024), b"")
    for chunk in chunks:
        digest.update(chunk)
        yield chunk


def _split(text: str) -> list[str] | None:
    """Split one line into fields; None when its quoting is broken."""
    if '"' not in text:
        return text.split(",")  # the common case, ~10x faster than the csv module
    try:
        rows = list(csv.reader([text], strict=True))
    except csv.Error:
        return None
    return rows[0] if rows else [""]


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _code_for(column: str, text: str) -> str:
    """Classify a bad value for the report's counts."""
    stripped = text.strip()
    if column in FLAG_FEATURES:
        return "bad_flag"
    if not stripped:
        return "empty_value"
    if stripped.lower().lstrip("+-") in ("nan", "inf", "infinity"):
        return "not_finite"
    if not stripped.isascii() or "_" in stripped or not _looks_numeric(stripped):
        return "not_a_number"
    value = float(stripped)
    if value != value or value in (float("inf"), float("-inf")):
        return "not_finite"
    if column == LABEL and value <= 0:
        return "price_not_positive"
    return "out_of_range"


def validate_upload(
    source: ByteSource,
    *,
    size: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    clock: Callable[[], float] = time.monotonic,
) -> ValidationReport:
    """Validate a whole upload and return its report (rows are parsed and discarded).

    Parameters
    ----------
    source
        A binary file object or an iterable of byte chunks.
    size
        The upload's size when known in advance.
    limits
        The limits to apply.
    clock
        Monotonic seconds, for ``limits.max_seconds``.
    """
    reader = UploadReader(source, size=size, limits=limits, clock=clock)
    for _ in reader:
        pass
    return reader.report
