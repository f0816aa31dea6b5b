"""The public contract's C# namespace clashes with nothing a Unity script imports.

The old csharp_namespace "Avatar.V1" put a namespace `Avatar` at the top level, which hides UnityEngine's
`Avatar` class in every script of the project (error CS0118). These tests compile a Unity script
(unity/NpcAvatarView.cs) that imports UnityEngine and the contract and uses both, with mono's C# compiler at
C# 7.2 (mcs stops there; Unity's own compilers accept it), against a stand-in UnityEngine.dll
(unity/UnityEngine.cs). They also check that every type the contract declares can be named without
ambiguity next to UnityEngine, that the old namespace fails with CS0118 and that a clashing type name fails
with CS0104, so the check can fail.

FALLBACK: the generated C# itself is not compiled. It needs the Google.Protobuf runtime assembly, and none
of the registries this project can use has it (Debian packages no protobuf C# runtime; no PyPI or npm
package ships Google.Protobuf.dll; NuGet is not reachable). So the namespace and every top-level type name
are read from the real `protoc --csharp_out` output, and empty stand-in declarations of exactly those names
in exactly that namespace are compiled with the script. That proves what a namespace clash depends on
(names and where they are declared), not that the generated code builds under Unity.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from contract_helpers import PUBLIC_PROTO_FILES, PROTO_DIR, run
from google.protobuf import descriptor_pb2

UNITY_DIR = Path(__file__).resolve().parent / "unity"
CONTRACT_NAMESPACE = "AvatarBackend.V1"
OLD_NAMESPACE = "Avatar.V1"
# Unity's language level is C# 7.3 or later; mono's mcs accepts at most 7.2, a subset.
MCS_FLAGS = ["-langversion:7.2", "-nologo", "-nowarn:169,219,414"]

# protoc's C# output declares top-level types with two spaces of indent inside the namespace block.
NAMESPACE_LINE = re.compile(r"^namespace ([\w.]+) \{$", re.M)
TOP_LEVEL_TYPE = re.compile(r"^  public ((?:static |sealed )*)(?:partial )?(class|enum) (\w+)", re.M)


@dataclass(frozen=True)
class CSharpType:
    modifiers: str   # "static ", "sealed " or ""
    kind: str        # "class" or "enum"
    name: str

    def stand_in(self) -> str:
        partial = "partial " if self.kind == "class" else ""
        return f"public {self.modifiers}{partial}{self.kind} {self.name} {{ }}"


@dataclass(frozen=True)
class GeneratedContract:
    namespace: str
    types: list[CSharpType]
    descriptors: descriptor_pb2.FileDescriptorSet

    def stand_in_source(self) -> str:
        body = "\n".join(f"    {t.stand_in()}" for t in self.types)
        return (f"// Stand-ins for the types protoc --csharp_out declares (see the test's docstring).\n"
                f"namespace {self.namespace}\n{{\n{body}\n}}\n")

    def every_type_by_simple_name(self) -> str:
        """A script naming every contract type unqualified beside UnityEngine: a shared name is CS0104."""
        names = ",\n        ".join(f"typeof({t.name})" for t in self.types)
        return ("using System;\nusing System.Collections;\nusing System.Collections.Generic;\n"
                f"using UnityEngine;\nusing {self.namespace};\n\n"
                f"static class EveryContractType\n{{\n    static readonly Type[] All = {{\n        {names}\n    }};\n}}\n")


@pytest.fixture(scope="module")
def mcs() -> str:
    path = shutil.which("mcs")
    if path is None:
        pytest.skip("mcs is not installed (Debian package mono-mcs; ./buildall.sh installs it)")
    return path


@pytest.fixture(scope="module")
def protoc() -> str:
    # Debian's protoc: the venv's grpc_tools.protoc has only the Python generators.
    path = shutil.which("protoc")
    if path is None or "--csharp_out" not in run([path, "--help"]).stdout:
        pytest.skip("protoc with the C# generator is not installed (Debian package protobuf-compiler; "
                    "./buildall.sh installs it)")
    return path


def generate_contract(protoc: str, proto_root: Path, out: Path) -> GeneratedContract:
    """Runs protoc --csharp_out on the public files under ``proto_root`` and reads what it declared."""
    out.mkdir(parents=True)
    descriptor_file = out / "contract.binpb"
    files = [str(path.relative_to(PROTO_DIR)) for path in PUBLIC_PROTO_FILES]
    generated = run([protoc, f"-I{proto_root}", f"--csharp_out={out}",
                     f"--descriptor_set_out={descriptor_file}", *files])
    assert generated.returncode == 0, generated.stdout
    descriptors = descriptor_pb2.FileDescriptorSet.FromString(descriptor_file.read_bytes())

    namespaces, types = set(), []
    for source in sorted(out.glob("*.cs")):
        text = source.read_text()
        namespaces.update(NAMESPACE_LINE.findall(text))
        types += [CSharpType(modifiers, kind, name) for modifiers, kind, name in TOP_LEVEL_TYPE.findall(text)]
    # The gRPC C# plugin (not packaged by Debian) adds one static class per service, named after it.
    types += [CSharpType("static ", "class", service.name)
              for file in descriptors.file for service in file.service]
    assert len(namespaces) == 1, namespaces
    return GeneratedContract(namespaces.pop(), types, descriptors)


def compile_csharp(mcs: str, out: Path, sources: list[Path], references: list[Path] = (),
                   library: bool = True) -> tuple[bool, str]:
    command = [mcs, *MCS_FLAGS, f"-out:{out}", *(f"-r:{ref}" for ref in references), *map(str, sources)]
    if library:
        command.insert(1, "-target:library")
    result = run(command)
    return result.returncode == 0, result.stdout


def unity_engine_dll(mcs: str, directory: Path, extra_declaration: str = "") -> Path:
    """Compiles the UnityEngine stand-in, optionally with one more type in namespace UnityEngine."""
    directory.mkdir(parents=True, exist_ok=True)
    source = (UNITY_DIR / "UnityEngine.cs").read_text()
    if extra_declaration:
        source += f"\nnamespace UnityEngine {{ {extra_declaration} }}\n"
    (directory / "UnityEngine.cs").write_text(source)
    ok, output = compile_csharp(mcs, directory / "UnityEngine.dll", [directory / "UnityEngine.cs"])
    assert ok, output
    return directory / "UnityEngine.dll"


def compile_unity_scripts(mcs: str, contract: GeneratedContract, unity_engine: Path,
                          directory: Path) -> tuple[bool, str]:
    """Compiles the contract stand-ins, NpcAvatarView.cs and the every-type script into one assembly."""
    directory.mkdir(parents=True, exist_ok=True)
    view = (UNITY_DIR / "NpcAvatarView.cs").read_text()
    assert f"using {CONTRACT_NAMESPACE};" in view
    (directory / "NpcAvatarView.cs").write_text(
        view.replace(f"using {CONTRACT_NAMESPACE};", f"using {contract.namespace};"))
    (directory / "ContractStandIns.cs").write_text(contract.stand_in_source())
    (directory / "EveryContractType.cs").write_text(contract.every_type_by_simple_name())
    return compile_csharp(mcs, directory / "Assembly-CSharp.dll",
                          [directory / name for name in ("ContractStandIns.cs", "EveryContractType.cs",
                                                         "NpcAvatarView.cs")],
                          references=[unity_engine])


@pytest.fixture(scope="module")
def contract(protoc: str, tmp_path_factory: pytest.TempPathFactory) -> GeneratedContract:
    return generate_contract(protoc, PROTO_DIR, tmp_path_factory.mktemp("csharp") / "generated")


@pytest.fixture(scope="module")
def unity_engine(mcs: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unity_engine_dll(mcs, tmp_path_factory.mktemp("unity"))


def test_protoc_output_is_read_completely(contract: GeneratedContract) -> None:
    """Every message, enum and service of the public files, plus one <File>Reflection class per file."""
    expected = {message.name for file in contract.descriptors.file for message in file.message_type}
    expected |= {enum.name for file in contract.descriptors.file for enum in file.enum_type}
    expected |= {service.name for file in contract.descriptors.file for service in file.service}
    names = [t.name for t in contract.types]
    assert len(names) == len(set(names))
    reflection_classes = set(names) - expected
    assert expected <= set(names)
    assert reflection_classes == {"AvatarServiceReflection", "ConverseReflection"}
    assert {"SessionConfig", "Character", "VideoFrame", "AudioFormat", "AudioCodec", "AvatarService"} <= set(names)


def test_generated_namespace_is_the_contract_namespace(contract: GeneratedContract) -> None:
    assert contract.namespace == CONTRACT_NAMESPACE
    for file in contract.descriptors.file:
        assert file.options.csharp_namespace == CONTRACT_NAMESPACE, file.name


def test_unity_script_compiles_with_unity_engine_and_the_contract(
        mcs: str, contract: GeneratedContract, unity_engine: Path, tmp_path: Path) -> None:
    ok, output = compile_unity_scripts(mcs, contract, unity_engine, tmp_path)
    assert ok, output


def test_old_namespace_hides_unity_avatar_cs0118(mcs: str, protoc: str, unity_engine: Path,
                                                 tmp_path: Path) -> None:
    old_protos = tmp_path / "proto"
    shutil.copytree(PROTO_DIR / "avatar" / "v1", old_protos / "avatar" / "v1")
    for path in (old_protos / "avatar" / "v1").glob("*.proto"):
        text = path.read_text()
        option = f'option csharp_namespace = "{CONTRACT_NAMESPACE}";'
        assert option in text, path.name
        path.write_text(text.replace(option, f'option csharp_namespace = "{OLD_NAMESPACE}";'))
    old_contract = generate_contract(protoc, old_protos, tmp_path / "generated")
    assert old_contract.namespace == OLD_NAMESPACE

    ok, output = compile_unity_scripts(mcs, old_contract, unity_engine, tmp_path / "build")

    assert not ok
    assert "error CS0118" in output and "`Avatar'" in output, output


def test_a_contract_type_named_like_a_unity_type_is_ambiguous_cs0104(
        mcs: str, contract: GeneratedContract, tmp_path: Path) -> None:
    clashing_unity_engine = unity_engine_dll(mcs, tmp_path / "unity", "public class VideoFrame { }")

    ok, output = compile_unity_scripts(mcs, contract, clashing_unity_engine, tmp_path / "build")

    assert not ok
    assert "error CS0104" in output and "VideoFrame" in output, output
