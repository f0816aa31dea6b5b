"""Building the Unity package's C# with mono for the tests: paths, compilers, and the C ABI as the header says.

The package (engine_plugins/unity) has two runtime assemblies: AvatarBackend.Client.Core (the P/Invoke layer,
AvatarClient, the A/V clock, voice chunking, the reconnect policy; no UnityEngine reference) and
AvatarBackend.Client (the MonoBehaviours). CI compiles both, the Editor assembly and the sample with mono's mcs
(C# 7.2, the most mcs accepts; Unity's compilers accept it too), the MonoBehaviours against a stand-in for the
Unity assemblies (unity_stand_in/), and runs the Core assembly's tests (unity_core_tests/) under mono.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO_ROOT / "engine_plugins" / "unity"
HEADER_INCLUDE_DIR = REPO_ROOT / "engine_plugins" / "cpp" / "include"
HEADER = HEADER_INCLUDE_DIR / "avatar_backend" / "avatar_client.h"
HERE = Path(__file__).resolve().parent
STAND_IN_DIR = HERE / "unity_stand_in"
CORE_TESTS_DIR = HERE / "unity_core_tests"
# The variable that names a built native core when it is not under engine_plugins/cpp/build*.
NATIVE_LIBRARY_VARIABLE = "AVATAR_CLIENT_LIBRARY"
NATIVE_LIBRARY_NAMES = ("libavatar_client.so", "libavatar_client.dylib")

MCS_FLAGS = ["-langversion:7.2", "-nologo", "-warnaserror"]


def run(command: list[str], cwd: Path | None = None, env: dict | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Runs a tool to completion; stdout and stderr together in ``.stdout``."""
    return subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, check=False)


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package {package}; ./buildall.sh installs it)")
    return path


def sources(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*.cs"))


def compile_csharp(out: Path, files: list[str], references: list[Path] = (), unsafe: bool = False,
                   executable: bool = False) -> Path:
    mcs = require_tool("mcs", "mono-mcs")
    command = [mcs, *MCS_FLAGS, f"-target:{'exe' if executable else 'library'}", f"-out:{out}",
               *(f"-r:{r}" for r in references), *files]
    if unsafe:
        command.append("-unsafe")
    built = run(command)
    assert built.returncode == 0, f"{' '.join(command)}\n{built.stdout}"
    return out


@dataclass(frozen=True)
class CoreBuild:
    """The Core assembly and the test program, built into ``directory``."""
    directory: Path
    core: Path
    tests: Path

    def run_tests(self, *args: str, library_dir: Path | None = None, timeout: float = 300):
        mono = require_tool("mono", "mono-runtime")
        env = dict(os.environ)
        if library_dir is not None:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(library_dir), env.get("LD_LIBRARY_PATH")]))
        return run([mono, "--debug", str(self.tests), *args], cwd=self.directory, env=env, timeout=timeout)


def build_core(directory: Path) -> CoreBuild:
    """Compiles Runtime/Core alone, without any Unity assembly: it must not need one."""
    directory.mkdir(parents=True, exist_ok=True)
    core = compile_csharp(directory / "AvatarBackend.Client.Core.dll", sources(PACKAGE_DIR / "Runtime" / "Core"),
                          unsafe=True)
    tests = compile_csharp(directory / "CoreTests.exe", sources(CORE_TESTS_DIR), references=[core, Path("System.Core")],
                           executable=True)
    return CoreBuild(directory, core, tests)


def compile_c_library(source: Path, out: Path) -> Path:
    gcc = require_tool("gcc", "gcc")
    built = run([gcc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", f"-I{HEADER_INCLUDE_DIR}",
                 "-o", str(out), str(source)])
    assert built.returncode == 0, built.stdout
    return out


# --- the C ABI as the header declares it -------------------------------------------------------------------

STRUCT = re.compile(r"typedef struct (avb_\w+) \{(.*?)\} \1;", re.S)
COMMENT = re.compile(r"/\*.*?\*/", re.S)
DECLARATOR = re.compile(r"(\w+)\s*(?:\[(\w+)\])?\s*$")
DEFINE = re.compile(r"^#define (AVB_\w+) (\d+)", re.M)
FUNCTION = re.compile(r"AVB_API\s+[\w\s*]+?\b(avb_\w+)\s*\(([^)]*)\)", re.S)


@dataclass(frozen=True)
class HeaderStruct:
    name: str
    fields: list[str]
    arrays: list[str]


def header_structs(text: str) -> list[HeaderStruct]:
    structs = []
    for name, body in STRUCT.findall(COMMENT.sub("", text)):
        fields, arrays = [], []
        for declaration in filter(None, (d.strip() for d in body.split(";"))):
            for part in declaration.split(","):
                field, length = DECLARATOR.search(part).groups()
                fields.append(field)
                if length:
                    arrays.append(field)
        structs.append(HeaderStruct(name, fields, arrays))
    return structs


def header_functions(text: str) -> dict[str, int]:
    """Exported function -> parameter count."""
    functions = {}
    for name, parameters in FUNCTION.findall(COMMENT.sub("", text)):
        parameters = parameters.strip()
        functions[name] = 0 if parameters in ("", "void") else parameters.count(",") + 1
    return functions


def header_constants(text: str) -> dict[str, int]:
    return {name: int(value) for name, value in DEFINE.findall(text)}


def layout_program(text: str) -> str:
    """A C program that prints the header's struct sizes, field offsets and array lengths in AbiDump's format."""
    lines = ["#include <stddef.h>", "#include <stdio.h>", '#include "avatar_backend/avatar_client.h"',
             "int main(void) {"]
    for struct in header_structs(text):
        lines.append(f'  printf("struct {struct.name} size %zu\\n", sizeof({struct.name}));')
        for field in struct.fields:
            lines.append(f'  printf("field {struct.name}.{field} %zu\\n", offsetof({struct.name}, {field}));')
        for field in struct.arrays:
            member = f"(({struct.name}*)0)->{field}"
            lines.append(f'  printf("array {struct.name}.{field} %zu\\n", sizeof({member}) / sizeof({member}[0]));')
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


def header_abi_lines(directory: Path) -> set[str]:
    """The ABI lines the header defines on this platform (struct layout from gcc)."""
    text = HEADER.read_text()
    gcc = require_tool("gcc", "gcc")
    program = directory / "header_layout.c"
    program.write_text(layout_program(text))
    binary = directory / "header_layout"
    built = run([gcc, "-std=c11", "-Wall", "-Werror", f"-I{HEADER_INCLUDE_DIR}", "-o", str(binary), str(program)])
    assert built.returncode == 0, built.stdout
    printed = run([str(binary)])
    assert printed.returncode == 0, printed.stdout
    lines = set(printed.stdout.splitlines())
    lines |= {f"const {name} {value}" for name, value in header_constants(text).items()}
    lines |= {f"function {name} {count}" for name, count in header_functions(text).items()}
    return lines


def find_native_library() -> Path | None:
    """The built native core: $AVATAR_CLIENT_LIBRARY, else the newest under engine_plugins/cpp/build*."""
    named = os.environ.get(NATIVE_LIBRARY_VARIABLE)
    if named:
        if not Path(named).is_file():
            pytest.fail(f"{NATIVE_LIBRARY_VARIABLE}={named} is not a file")
        return Path(named)
    candidates = [path for build in (REPO_ROOT / "engine_plugins" / "cpp").glob("build*") if build.is_dir()
                  for name in NATIVE_LIBRARY_NAMES for path in build.rglob(name) if path.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None
