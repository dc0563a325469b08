"""Model artifacts extract the same way on every supported Python (3.11.2 included)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from citymodels_devkit.archives import extract_safely


def archive(*members: tarfile.TarInfo, data: bytes = b"{}") -> tarfile.TarFile:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member in members:
            if member.isfile():
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
            else:
                tar.addfile(member)
    buffer.seek(0)
    return tarfile.open(fileobj=buffer, mode="r:gz")


def member(name: str, kind: bytes = tarfile.REGTYPE, *, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = kind, mode
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    return info


def test_regular_files_and_directories_are_extracted(tmp_path: Path) -> None:
    with archive(member("code", tarfile.DIRTYPE, mode=0o755), member("code/inference.py")) as tar:
        extract_safely(tar, tmp_path / "model")
    assert (tmp_path / "model" / "code" / "inference.py").read_bytes() == b"{}"


def test_set_uid_and_world_writable_modes_are_dropped(tmp_path: Path) -> None:
    with archive(member("model.json", mode=0o4777)) as tar:
        extract_safely(tar, tmp_path)
    assert (tmp_path / "model.json").stat().st_mode & 0o7777 == 0o755


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (member("../outside.json"), "outside"),
        (member("/etc/cron.d/x"), "outside"),
        (member("code/../../outside.json"), "outside"),
        (member("link", tarfile.SYMTYPE), "not a regular file"),
        (member("fifo", tarfile.FIFOTYPE), "not a regular file"),
    ],
)
def test_anything_else_refuses_the_whole_archive(
    tmp_path: Path, bad: tarfile.TarInfo, message: str
) -> None:
    # GIVEN an artifact whose first member is fine and whose second is not
    with archive(member("model.json"), bad) as tar, pytest.raises(tarfile.TarError, match=message):
        extract_safely(tar, tmp_path / "model")
    # THEN nothing was written, not even the good member
    assert not (tmp_path / "model").exists()
    assert not (tmp_path / "outside.json").exists()
