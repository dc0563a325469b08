"""tools/pythons.py: which interpreters `make demo` and `make test` use, and what they say."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools import pythons
from tools.pythons import Interpreter

ROOT = Path(__file__).resolve().parents[2]


def interpreter(release: str, path: str = "", *, venv: bool = True) -> Interpreter:
    major, minor, patch = (int(p) for p in release.split("."))
    return Interpreter(path or f"/py/{release}/python", (major, minor, patch), "CPython", venv)


FOUND = [
    interpreter("3.11.7"),
    interpreter("3.11.2", "/usr/bin/python3.11"),
    interpreter("3.13.0"),
    interpreter("3.12.1"),
    interpreter("3.10.13"),
]


def test_the_lambda_runtimes_python_is_preferred_for_the_venv() -> None:
    assert pythons.primary(FOUND, "3.13") == FOUND[2]
    assert pythons.primary(FOUND, "3.12") == FOUND[3]


def test_without_the_preferred_version_the_newest_supported_one_is_used() -> None:
    assert pythons.primary(FOUND[:2] + FOUND[3:], "3.13") == FOUND[3]
    assert pythons.primary([FOUND[4]], "3.13") is None  # 3.10 is not supported


def test_the_other_pythons_are_one_per_version_the_lowest_patch_release() -> None:
    # Debian 12's 3.11.2 is tested rather than 3.11.7: the older one lacks more
    others = pythons.others(FOUND, FOUND[2])
    assert [i.release for i in others] == ["3.11.2", "3.12.1"]
    assert others[0].path == "/usr/bin/python3.11"


def test_an_interpreter_that_cannot_make_a_venv_says_which_package_to_install() -> None:
    broken = interpreter("3.11.2", venv=False)
    assert pythons.usable([broken]) == []
    assert "install python3.11-venv" in (broken.problem() or "")


def test_with_no_supported_python_the_message_says_what_was_found_and_what_to_install() -> None:
    message = pythons.none_found([FOUND[4]])
    assert "3.11, 3.12, 3.13" in message
    assert "/py/3.10.13/python: Python 3.10.13 is not supported" in message
    assert "apt install python3.11-venv" in message
    assert "PYTHON=" in message


def test_this_interpreter_is_probed_for_what_it_is() -> None:
    found = pythons.probe(sys.executable)
    assert found is not None
    assert found.version == tuple(sys.version_info[:3])
    assert found.problem() is None


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "pythons.py"), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **env},
    )


def test_check_accepts_this_python_and_refuses_what_is_not_one(tmp_path: Path) -> None:
    assert run("check", sys.executable).stdout.strip() == os.path.realpath(sys.executable)
    fake = tmp_path / "python3.12"
    fake.write_text("#!/bin/sh\nexit 127\n")
    fake.chmod(0o755)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python3").symlink_to(sys.executable)
    isolated = {"PATH": str(tmp_path / "bin"), "PYENV_ROOT": str(tmp_path), "HOME": str(tmp_path)}
    result = run("check", str(fake), **isolated)
    assert result.returncode == 1
    assert f"PYTHON={fake}: does not run" in result.stderr
    # and it names the interpreters that would do
    assert f"PYTHON={os.path.realpath(sys.executable)}" in result.stderr


def test_primary_on_a_machine_without_a_supported_python_exits_1_with_the_advice(
    tmp_path: Path,
) -> None:
    result = run("primary", PATH=str(tmp_path), PYENV_ROOT=str(tmp_path), HOME=str(tmp_path))
    assert result.returncode == 1
    assert "none was found" in result.stderr
    assert "pyenv install 3.13" in result.stderr


@pytest.mark.parametrize("name", ["python3.13", "python3"])
def test_interpreters_are_found_in_every_path_directory(tmp_path: Path, name: str) -> None:
    # an interpreter behind another directory of PATH still counts (Debian's python3.11
    # behind pyenv's), found under any of the names tried
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    (tmp_path / "second" / name).symlink_to(sys.executable)
    path = os.pathsep.join([str(tmp_path / "first"), str(tmp_path / "second")])
    result = run("list", PATH=path, PYENV_ROOT=str(tmp_path), HOME=str(tmp_path))
    release = "{}.{}.{}".format(*sys.version_info[:3])
    assert release in result.stdout
