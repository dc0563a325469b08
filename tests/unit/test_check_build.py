"""tools/check_build.py catches a layer built for another Python or architecture."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import check_build

AARCH64_ELF = b"\x7fELF\x02\x01\x01" + bytes(11) + (0xB7).to_bytes(2, "little") + bytes(44)


def layer_with(tmp_path: Path, name: str) -> Path:
    extension = tmp_path / "CommonLayer" / "python" / "pydantic_core" / name
    extension.parent.mkdir(parents=True)
    extension.write_bytes(AARCH64_ELF)
    return tmp_path


def abi_problems(build_dir: Path, abi: str) -> list[str]:
    return [p for p in check_build.check(build_dir, "arm64", abi) if "CPython" in p]


def test_an_extension_built_for_another_python_is_reported(tmp_path: Path) -> None:
    build = layer_with(tmp_path, "_pydantic_core.cpython-311-aarch64-linux-gnu.so")
    assert abi_problems(build, "313") == [
        "CommonLayer: pydantic_core/_pydantic_core.cpython-311-aarch64-linux-gnu.so is built "
        "for CPython 311, the runtime is CPython 313"
    ]


@pytest.mark.parametrize(
    "name", ["_pydantic_core.cpython-313-aarch64-linux-gnu.so", "_speedups.abi3.so"]
)
def test_extensions_for_the_runtimes_python_or_the_stable_abi_pass(
    tmp_path: Path, name: str
) -> None:
    assert abi_problems(layer_with(tmp_path, name), "313") == []


def test_the_runtimes_abi_is_read_from_the_template() -> None:
    runtime = (check_build.ROOT / "template.yaml").read_text(encoding="utf-8")
    abi = check_build.template_abi()
    assert f"    Runtime: python{abi[0]}.{abi[1:]}\n" in runtime
