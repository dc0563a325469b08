"""The docs test: the shell commands of README.md and docs/*.md work as written.

Every command in a ``sh`` block is one of:

- run, in order, one shell per document, in a scratch copy of the project (its
  ``.venv`` is this one; nothing else is set up: no AWS variables, an empty HOME), against
  local stacks on free ports (the documented 4566/3000, 4866/3300 are replaced by free
  ones, so this test never clashes with a stack someone else runs);
- a ``make`` target: the test suite's own entry points (``make test`` runs this test),
  checked to exist in the Makefile;
- marked in the document: a line ending in ``# needs AWS``, or a block after
  ``<!-- docs-test: needs AWS -->`` (an AWS account needed) or
  ``<!-- docs-test: synopsis -->`` (a reference form with placeholders). These are not
  run, but every ``citymodels`` command in them must be a real command and every
  ``--option`` one of its options.

A command with placeholders (``[...]``, ``<...>``, ``...``) in an unmarked block fails
the test: mark it, or make it runnable.

docs/cli.md is a reference, not a walk-through: before its commands run, a detached
local stack serves ``NewYork_NY``, and the files its examples name exist
(``houses.csv``, ``houses.json``, ``my-outputs.json``, ``data/NewYork_NY.csv``).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from citymodels_devkit.cli import build_parser
from citymodels_devkit.paths import REPO_ROOT

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!-- docs-test: (needs AWS|synopsis) -->")
FENCE = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)
PLACEHOLDER = re.compile(r"\[|<[A-Za-z]|\.\.\.")
LINE_NEEDS_AWS = "# needs AWS"
TOOLS = ("aws", "curl", "jq")


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int
    marker: str | None
    commands: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO_ROOT)}:{self.line}"


def _commands(body: str) -> tuple[str, ...]:
    """The block's commands: continuation lines joined, comment-only lines dropped."""
    commands: list[str] = []
    pending = ""
    for raw in body.splitlines():
        line = pending + raw
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        if line.strip() and not line.lstrip().startswith("#"):
            commands.append(line.strip())
    return tuple(commands)


def doc_blocks(doc: Path) -> list[Block]:
    text = doc.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.fullmatch(before.strip())
        blocks.append(
            Block(
                doc,
                text[: match.start()].count("\n") + 1,
                marker.group(1) if marker else None,
                _commands(match.group(1)),
            )
        )
    return blocks


ALL_BLOCKS = [block for doc in DOCS for block in doc_blocks(doc)]


def _is_make(command: str) -> bool:
    return command.split()[0] == "make"


def _runnable(block: Block) -> list[str]:
    if block.marker is not None:
        return []
    return [
        c for c in block.commands if not _is_make(c) and not c.rstrip().endswith(LINE_NEEDS_AWS)
    ]


# -- every command is run or marked ----------------------------------------------------


def test_the_docs_have_shell_blocks_to_check() -> None:
    assert {b.doc.name for b in ALL_BLOCKS} >= {"README.md", "cli.md", "local-stack.md"}
    assert any(b.marker == "needs AWS" for b in ALL_BLOCKS)
    assert any(_runnable(b) for b in ALL_BLOCKS)


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda b: b.where)
def test_every_command_is_runnable_or_marked(block: Block) -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    for command in block.commands:
        if _is_make(command):
            target = command.split()[1]
            assert re.search(rf"^{re.escape(target)}:", makefile, re.M), (
                f"{block.where}: make {target} is no Makefile target"
            )
    for command in _runnable(block):
        unquoted = re.sub(r"'[^']*'|\"[^\"]*\"", "", command.split(" # ")[0])
        assert not PLACEHOLDER.search(unquoted), (
            f"{block.where}: {command!r} cannot run as written: make it runnable, or mark "
            "the block <!-- docs-test: synopsis --> / <!-- docs-test: needs AWS -->, or the "
            f"line {LINE_NEEDS_AWS}"
        )


def _subcommand_options(argv: list[str]) -> tuple[list[str], set[str]]:
    """Walk ``citymodels ARGV``'s subcommands; return them and the last one's options."""
    parser: argparse.ArgumentParser = build_parser()
    path: list[str] = []
    for token in argv:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers or token not in subparsers[0].choices:
            break
        parser = subparsers[0].choices[token]
        path.append(token)
    options = {o for a in parser._actions for o in a.option_strings}
    return path, options


@pytest.mark.parametrize(
    "block", [b for b in ALL_BLOCKS if b.marker or any("# needs AWS" in c for c in b.commands)],
    ids=lambda b: b.where,
)  # fmt: skip
def test_marked_commands_name_real_commands_and_options(block: Block) -> None:
    for command in block.commands:
        words = command.split(" # ")[0].replace("[", " ").replace("]", " ").replace("|", " ")
        tokens = words.split()
        while tokens and "=" in tokens[0] and not tokens[0].startswith("-"):
            tokens.pop(0)  # VAR=value before the command
        if not tokens or Path(tokens[0]).name != "citymodels":
            continue
        path, options = _subcommand_options(tokens[1:])
        assert path, f"{block.where}: {command!r} names no citymodels command"
        for token in tokens[1:]:
            if token.startswith("--"):
                assert token.split("=")[0] in options, (
                    f"{block.where}: {' '.join(path)} has no option {token}"
                )


# -- the runnable ones run ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _with_free_ports(command: str, ports: dict[int, int]) -> str:
    for documented, free in ports.items():
        command = re.sub(rf"(?<=127\.0\.0\.1:){documented}\b", str(free), command)
        command = re.sub(rf"(?<=-port ){documented}\b", str(free), command)
    if re.match(r"\S*citymodels local up\b", command) and "--aws-port" not in command:
        command = command.replace(
            "local up", f"local up --aws-port {ports[4566]} --api-port {ports[3000]}", 1
        )
    return command


def _scratch_project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    for name in ("template.yaml", "pyproject.toml", ".venv"):
        (root / name).symlink_to(REPO_ROOT / name)
    return root


def _environment(root: Path, tmp_path: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CITYMODELS_", "COLUMNS"))
    }
    (tmp_path / "home").mkdir()
    env["HOME"] = str(tmp_path / "home")  # no ~/.aws: only what the docs set
    env["PATH"] = f"{root / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"  # the venv, active
    env["COLUMNS"] = "80"
    return env


def _run(script: list[str], root: Path, env: dict[str, str]) -> str:
    text = "set -euo pipefail\n" + "\n".join(f"echo '$ '{shlex.quote(c)}\n{c}" for c in script)
    done = subprocess.run(
        ["bash", "-c", text], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"a documented command failed ({done.returncode}):\n{output}"
    return output


def _stop_stacks(root: Path, env: dict[str, str]) -> None:
    for pid_file in (root / ".citymodels").glob("local*.pid"):
        lines = pid_file.read_text().split("\n")
        if len(lines) > 1:
            subprocess.run(
                ["citymodels", "local", "down", "--outputs-file", lines[1]],
                cwd=root, env=env, capture_output=True, timeout=60,
            )  # fmt: skip


CLI_SETUP = [
    "citymodels local up --detach",
    "citymodels gen-data --cities 1 --out data",
    "citymodels onboard NewYork_NY data/NewYork_NY.csv --wait --interval 0.5",
    "head -n 20 data/NewYork_NY.csv > houses.csv",
    """echo '{"instances": [{"YEAR_BUILT": 1995, "SQUARE_FEET": 2500, "NUM_BEDROOMS": 3, \
"NUM_BATHROOMS": 2, "LOT_ACRES": 0.5, "GARAGE_SPACES": 2, "FRONT_PORCH": "y", \
"DECK": "n"}]}' > houses.json""",
    "cp .citymodels/outputs.json my-outputs.json",
]
"""What docs/cli.md's examples assume: a running stack serving NewYork_NY, their files."""

EXPECTED = {
    "README.md": ['"model_version"', "LosAngeles_CA", "stopped the local stack"],
    "local-stack.md": ['"predictions"', "stopped the local stack (pid"],
    "cli.md": ["NewYork_NY model version", '"latency_ms"', "PUBLISHED"],
}
"""What each document's commands must print (beyond exiting 0)."""


@pytest.mark.slow
@pytest.mark.parametrize(
    "doc", [d for d in DOCS if any(_runnable(b) for b in doc_blocks(d))], ids=lambda d: d.name
)
def test_the_documented_commands_run_against_the_local_stack(doc: Path, tmp_path: Path) -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the docs use {', '.join(missing)}, not installed here")
    root = _scratch_project(tmp_path)
    env = _environment(root, tmp_path)
    ports = {documented: _free_port() for documented in (4566, 3000, 4866, 3300)}
    script = [c for block in doc_blocks(doc) for c in _runnable(block)]
    if doc.name == "cli.md":
        script = [*CLI_SETUP, *script, "citymodels local down"]
    try:
        output = _run([_with_free_ports(c, ports) for c in script], root, env)
    finally:
        _stop_stacks(root, env)
    for fragment in EXPECTED.get(doc.name, []):
        assert fragment in output, f"{doc.name}: {fragment!r} not printed:\n{output}"
    assert not list((root / ".citymodels").glob("local*.pid")), "a stack was left running"
