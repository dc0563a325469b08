"""Find the Python interpreters citymodels supports on this machine.

The Makefile runs this with whatever ``python3`` the machine has (it needs nothing but
the standard library, and runs on Python 3.7+), so it can say clearly what to install
when no supported interpreter is there.

Supported: CPython 3.11 (from 3.11.0: Debian 12's 3.11.2 included), 3.12 and 3.13.
Interpreters are looked for in every directory of ``PATH`` (``python3.13``,
``python3.12``, ``python3.11``, ``python3``, not only the first match: Debian's
``/usr/bin/python3.11`` behind pyenv's shims counts), then among pyenv's and uv's
installed versions. Each candidate is run once to read its version and to check that
it can make a virtualenv (Debian and Ubuntu ship ``venv`` apart, as ``python3.X-venv``).

Commands (``python3 tools/pythons.py --help``):

- ``primary [--prefer 3.13]``: the interpreter for ``.venv``: the preferred version
  (the Lambda runtime's, so the local loop runs what Lambda runs) if found, else the
  newest found. Prints its path; exits 1 with what to install when there is none.
- ``check EXE``: EXE (``make ... PYTHON=EXE``) is supported; prints its path or exits 1.
- ``others --primary EXE``: one interpreter per other supported minor version, the
  lowest patch release found (the oldest is the likeliest to lack something), as
  ``VERSION PATH`` lines. ``make test`` runs the unit tests on each.
- ``find 3.13``: an interpreter of that version (``sam build`` needs the Lambda
  runtime's own); prints nothing and exits 1 when there is none.
- ``list``: every interpreter found, supported or not, and why.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

SUPPORTED = ((3, 11), (3, 12), (3, 13))
NAMES = ("python3.13", "python3.12", "python3.11", "python3")
PROBE = (
    "import json, platform, sys\n"
    "try:\n"
    "    import ensurepip, venv  # noqa: F401\n"
    "    venv_ok = True\n"
    "except ImportError:\n"
    "    venv_ok = False\n"
    "print(json.dumps({'version': platform.python_version(),"
    " 'implementation': platform.python_implementation(),"
    " 'executable': sys.executable, 'venv': venv_ok}))\n"
)


class Interpreter(NamedTuple):
    path: str
    version: tuple[int, int, int]
    implementation: str
    venv: bool

    @property
    def minor(self) -> str:
        return "{}.{}".format(*self.version[:2])

    @property
    def release(self) -> str:
        return "{}.{}.{}".format(*self.version)

    def problem(self) -> str | None:
        """Why this interpreter cannot be used, or None."""
        if self.implementation != "CPython":
            return f"{self.implementation} is not CPython"
        if self.version[:2] not in SUPPORTED:
            return f"Python {self.release} is not supported ({supported_text()})"
        if not self.venv:
            return (
                f"Python {self.release} cannot make virtualenvs (ensurepip/venv missing): install "
                f"python{self.minor}-venv (Debian/Ubuntu)"
            )
        return None


def supported_text() -> str:
    return ", ".join("{}.{}".format(*v) for v in SUPPORTED)


def probe(path: str) -> Interpreter | None:
    """Run ``path`` once; None when it does not run (a pyenv shim for an inactive version)."""
    try:
        result = subprocess.run(
            [path, "-I", "-c", PROBE], capture_output=True, text=True, timeout=30, check=False
        )
        if result.returncode != 0:
            return None
        found = json.loads(result.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None
    parts = [int("".join(c for c in p if c.isdigit()) or 0) for p in found["version"].split(".")]
    version = ([*parts, 0, 0, 0])[:3]
    return Interpreter(
        path=os.path.realpath(found["executable"] or path),
        version=(version[0], version[1], version[2]),
        implementation=found["implementation"],
        venv=bool(found["venv"]),
    )


def candidates() -> list[str]:
    """Interpreter paths to try, in order: PATH (every directory), pyenv, uv."""
    paths: list[str] = []
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        directory = Path(entry or ".")
        # pyenv's shims only re-run its versions (looked at directly below) and cost a
        # shell start each.
        if directory.name == "shims":
            continue
        for name in NAMES:
            path = directory / name
            if path.is_file() and os.access(path, os.X_OK):
                paths.append(str(path))
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path("~/.pyenv").expanduser())
    uv = Path(
        os.environ.get("UV_PYTHON_INSTALL_DIR") or Path("~/.local/share/uv/python").expanduser()
    )
    for root, pattern in (
        (pyenv, "versions/*/bin/python3.1[0-9]"),
        (uv, "cpython-3.1*/bin/python3.1[0-9]"),
    ):
        paths.extend(sorted((str(p) for p in root.glob(pattern)), reverse=True))
    return paths


def discover() -> list[Interpreter]:
    """Every distinct interpreter found (by its real executable), in search order."""
    tried: set[str] = set()
    found: dict[str, Interpreter] = {}
    for path in candidates():
        real = os.path.realpath(path)
        if real in tried or real in found:
            continue
        tried.add(real)
        interpreter = probe(path)
        if interpreter is not None:
            found.setdefault(interpreter.path, interpreter)
    return list(found.values())


def usable(found: list[Interpreter]) -> list[Interpreter]:
    return [i for i in found if i.problem() is None]


def none_found(found: list[Interpreter]) -> str:
    lines = [f"citymodels needs CPython {supported_text()} with venv; none was found."]
    for interpreter in found:
        lines.append(f"  {interpreter.path}: {interpreter.problem()}")
    lines += [
        "Install one, then run the command again:",
        "  Debian 12:          sudo apt install python3.11-venv",
        "  Ubuntu 24.04:       sudo apt install python3.12-venv",
        "  Fedora, Debian 13:  sudo dnf install python3.13 / sudo apt install python3.13-venv",
        "  macOS (Homebrew):   brew install python@3.13",
        "  pyenv:              pyenv install 3.13",
        "or name one: make demo PYTHON=/path/to/python3.12",
    ]
    return "\n".join(lines)


def primary(found: list[Interpreter], prefer: str | None) -> Interpreter | None:
    good = usable(found)
    if prefer:
        for interpreter in good:
            if interpreter.minor == prefer:
                return interpreter
    return max(good, key=lambda i: i.version[:2], default=None)


def others(found: list[Interpreter], main: Interpreter) -> list[Interpreter]:
    lowest: dict[str, Interpreter] = {}
    for interpreter in usable(found):
        if interpreter.minor == main.minor:
            continue
        current = lowest.get(interpreter.minor)
        if current is None or interpreter.version < current.version:
            lowest[interpreter.minor] = interpreter
    return sorted(lowest.values(), key=lambda i: i.version)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("primary", help="the interpreter for .venv")
    command.add_argument("--prefer", help="a version such as 3.13, taken first when found")
    command = commands.add_parser("check", help="is EXE a supported interpreter?")
    command.add_argument("exe")
    command = commands.add_parser("others", help="one interpreter per other version")
    command.add_argument("--primary", required=True, help="the interpreter of .venv")
    command = commands.add_parser("find", help="an interpreter of one version")
    command.add_argument("version", help="such as 3.13")
    commands.add_parser("list", help="every interpreter found")
    args = parser.parse_args(argv)

    if args.command == "check":
        exe = args.exe
        if os.sep not in exe:
            exe = shutil.which(exe) or exe
        interpreter = probe(exe)
        if interpreter is None:
            why = "not found" if not Path(exe).exists() else "try running it by hand"
            problem = f"does not run as a Python interpreter ({why})"
        else:
            problem = interpreter.problem() or ""
        if not problem and interpreter is not None:
            print(interpreter.path)
            return 0
        print(f"PYTHON={args.exe}: {problem}.", file=sys.stderr)
        good = usable(discover())
        if good:
            print("Supported interpreters found here:", file=sys.stderr)
            for candidate in good:
                print(f"  PYTHON={candidate.path}  ({candidate.release})", file=sys.stderr)
        return 1

    found = discover()
    if args.command == "list":
        for interpreter in found:
            print(
                "{:<8} {:<55} {}".format(
                    interpreter.release, interpreter.path, interpreter.problem() or "ok"
                )
            )
        return 0
    if args.command == "primary":
        chosen = primary(found, args.prefer)
        if chosen is None:
            print(none_found(found), file=sys.stderr)
            return 1
        print(chosen.path)
        return 0
    if args.command == "others":
        main_interpreter = probe(args.primary)
        if main_interpreter is None:
            return 1
        for interpreter in others(found, main_interpreter):
            print(interpreter.release, interpreter.path)
        return 0
    # find
    for interpreter in usable(found):
        if interpreter.minor == args.version:
            print(interpreter.path)
            return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
