"""Check what ``sam build`` produced: what each function and the layer will really ship.

``sam build`` succeeding says little about the content; this checks the facts the
template relies on:

- every function's artifact has its handler module (``app.py``);
- the Bootstrap function carries ``preprocessing/preprocess.py`` and ``inference.py``,
  byte-identical to the repository's (they reach it through a symlink);
- the layer has ``python/citymodels`` (identical to ``layers/common/citymodels``) and
  every distribution of ``layers/common/requirements.txt`` at its pinned version;
- every compiled extension in the layer is built for the functions' architecture
  (``sam build`` without Docker must have fetched wheels for it, not for this machine)
  and for the runtime's Python (``cpython-313`` for ``python3.13``: built with another
  interpreter, the layer would not import on Lambda).

Usage (after ``sam build --build-dir DIR``)::

    python tools/check_build.py DIR [--architecture arm64|x86_64]

The architecture defaults to the one template.yaml's Globals give the functions.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = {
    "OnboardFunction": "onboard",
    "TrainFunction": "train",
    "PublishFunction": "publish",
    "RetryFunction": "retry",
    "ReconcileFunction": "reconcile",
    "PredictFunction": "predict",
    "AuthorizeFunction": "authorize",
    "BootstrapFunction": "bootstrap",
}
ELF_MACHINES = {"arm64": 0xB7, "x86_64": 0x3E}
"""ELF ``e_machine`` of each Lambda architecture (EM_AARCH64, EM_X86_64)."""
_GLOBAL_ARCHITECTURE = re.compile(r"^    Architectures: \[(\w+)\]", re.MULTILINE)
_GLOBAL_RUNTIME = re.compile(r"^    Runtime: python(3)\.(\d+)", re.MULTILINE)
_EXTENSION_ABI = re.compile(r"\.cpython-(\d+)-")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def template_architecture(template: Path = ROOT / "template.yaml") -> str:
    """Return the architecture of ``Globals: Function: Architectures: [...]``."""
    match = _GLOBAL_ARCHITECTURE.search(template.read_text(encoding="utf-8"))
    if match is None or match.group(1) not in ELF_MACHINES:
        raise SystemExit(f"{template}: no Globals Architectures: [arm64|x86_64] line")
    return match.group(1)


def template_abi(template: Path = ROOT / "template.yaml") -> str:
    """Return the CPython ABI of ``Globals: Function: Runtime`` (``313`` for python3.13)."""
    match = _GLOBAL_RUNTIME.search(template.read_text(encoding="utf-8"))
    if match is None:
        raise SystemExit(f"{template}: no Globals Runtime: python3.N line")
    return match.group(1) + match.group(2)


def elf_machine(path: Path) -> int | None:
    """Return the ELF ``e_machine`` of a shared object, or None if it is not ELF."""
    header = path.read_bytes()[:20]
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    # EI_DATA: 1 little-endian, 2 big-endian.
    return int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def check(build_dir: Path, architecture: str, abi: str | None = None) -> list[str]:
    """Return the problems found in ``build_dir`` (empty when the build is as expected)."""
    problems: list[str] = []
    for logical_id, name in FUNCTIONS.items():
        if not (build_dir / logical_id / "app.py").is_file():
            problems.append(f"{logical_id}: no app.py in the built function (functions/{name}/)")

    bootstrap = build_dir / "BootstrapFunction" / "preprocessing"
    for script in ("preprocess.py", "inference.py"):
        built, source = bootstrap / script, ROOT / "preprocessing" / script
        if not built.is_file() or built.is_symlink():
            problems.append(f"BootstrapFunction: preprocessing/{script} was not copied in")
        elif built.read_bytes() != source.read_bytes():
            problems.append(f"BootstrapFunction: preprocessing/{script} differs from the repo's")

    layer = build_dir / "CommonLayer" / "python"
    package = ROOT / "layers" / "common" / "citymodels"
    for source in sorted(package.rglob("*.py")):
        built = layer / "citymodels" / source.relative_to(package)
        if not built.is_file() or built.read_bytes() != source.read_bytes():
            problems.append(
                f"CommonLayer: citymodels/{source.relative_to(package)} missing or stale"
            )

    installed = {
        _normalise(m.group(1)): m.group(2)
        for d in layer.glob("*.dist-info")
        if (m := re.match(r"(.+?)-([^-]+)\.dist-info$", d.name))
    }
    requirements = (ROOT / "layers" / "common" / "requirements.txt").read_text(encoding="utf-8")
    for line in requirements.splitlines():
        if match := _PIN.match(line.strip()):
            name, version = _normalise(match.group(1)), match.group(2)
            if installed.get(name) != version:
                problems.append(
                    f"CommonLayer: {match.group(1)}=={version} expected, "
                    f"found {installed.get(name, 'nothing')}"
                )

    wanted = ELF_MACHINES[architecture]
    extensions = sorted(layer.rglob("*.so"))
    for path in extensions:
        machine = elf_machine(path)
        if machine is not None and machine != wanted:
            problems.append(
                f"CommonLayer: {path.relative_to(layer)} is not built for {architecture} "
                f"(ELF machine {machine:#x})"
            )
        built_for = _EXTENSION_ABI.search(path.name)
        if abi is not None and built_for is not None and built_for.group(1) != abi:
            problems.append(
                f"CommonLayer: {path.relative_to(layer)} is built for CPython "
                f"{built_for.group(1)}, the runtime is CPython {abi}"
            )
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Check a build directory; print the problems; exit 1 if there are any."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("build_dir", type=Path)
    parser.add_argument("--architecture", choices=sorted(ELF_MACHINES))
    args = parser.parse_args(argv)
    architecture = args.architecture or template_architecture()
    abi = template_abi()
    problems = check(args.build_dir, architecture, abi)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        count = len(list((args.build_dir / "CommonLayer").rglob("*.so")))
        print(
            f"build ok: {len(FUNCTIONS)} functions, layer with {count} compiled extensions "
            f"for {architecture}, CPython {abi}"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
