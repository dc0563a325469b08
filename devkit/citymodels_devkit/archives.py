"""Extracting model artifacts (``model.tar.gz``) on any supported Python."""

from __future__ import annotations

import tarfile
from pathlib import Path


def extract_safely(tar: tarfile.TarFile, destination: Path) -> None:
    """Extract an artifact's regular files and directories under ``destination`` only.

    A model artifact holds nothing else, so anything else is refused, whatever the
    Python: absolute names, ``..`` components, links, devices and FIFOs raise
    :class:`tarfile.TarError` before a byte is written, and modes lose set-uid bits
    and group/other write. Interpreters that have :func:`tarfile.data_filter`
    (3.11.4+, 3.12+) apply it as well; on 3.11.0-3.11.3 (Debian 12's 3.11.2) the
    checks here are the whole guard, and they refuse the same archives.

    Parameters
    ----------
    tar
        The open archive.
    destination
        The directory to extract into (created if missing).

    Raises
    ------
    tarfile.TarError
        A member that is not a regular file or directory, or would land outside
        ``destination``; nothing is extracted then.
    """
    root = destination.resolve()
    members = tar.getmembers()
    for member in members:
        name = member.name
        if not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"{name!r} is not a regular file or a directory")
        target = (root / name).resolve()
        if Path(name).is_absolute() or ".." in Path(name).parts or not target.is_relative_to(root):
            raise tarfile.TarError(f"{name!r} would be written outside the artifact's directory")
        member.mode &= 0o755
    if hasattr(tarfile, "data_filter"):
        tar.extractall(root, members=members, filter="data")
    else:  # pragma: no cover - Python 3.11.0-3.11.3 only
        tar.extractall(root, members=members)
