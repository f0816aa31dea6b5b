"""The Unity package compiles, matches the C ABI, and its engine-independent C# works under mono.

What runs here (no Unity editor, no server, no native core): the whole package is compiled with mono's mcs
(Runtime/Core alone, with no Unity assembly at all; the MonoBehaviours, the Editor assembly and the sample
against the stand-in in unity_stand_in/); the Core assembly's unit tests run under mono; its structs, constants
and functions are compared with the header as gcc lays it out; and the P/Invoke layer is driven through a
scripted library with the header's ABI (unity_core_tests/fake_avatar_client.c). What Unity itself does with
the MonoBehaviours (audio callbacks, texture upload, IL2CPP, mobile) needs a Unity editor; see the package
README. test_unity_plugin_native_session.py runs a session through the real native core.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from unity_plugin_build import (CORE_TESTS_DIR, PACKAGE_DIR, STAND_IN_DIR, CoreBuild, build_core,
                                compile_c_library, compile_csharp, header_abi_lines, sources)


@pytest.fixture(scope="module")
def core_build(tmp_path_factory) -> CoreBuild:
    return build_core(tmp_path_factory.mktemp("unity_core"))


def run_suite(core_build: CoreBuild, suite: str) -> None:
    result = core_build.run_tests(suite)
    failures = [line for line in result.stdout.splitlines() if not line.startswith("PASS ")]
    assert result.returncode == 0, "\n".join(failures)
    assert " 0 failed" in result.stdout, result.stdout


# --- compilation ------------------------------------------------------------------------------------------

def test_the_monobehaviours_editor_and_sample_compile_against_unity_names(core_build, tmp_path):
    engine = compile_csharp(tmp_path / "UnityEngine.dll", [str(STAND_IN_DIR / "UnityEngine.cs")])
    editor_api = compile_csharp(tmp_path / "UnityEditor.dll", [str(STAND_IN_DIR / "UnityEditor.cs")],
                                references=[engine])
    runtime = compile_csharp(tmp_path / "AvatarBackend.Client.dll", sources(PACKAGE_DIR / "Runtime" / "Unity"),
                             references=[engine, core_build.core])
    compile_csharp(tmp_path / "AvatarBackend.Client.Editor.dll", sources(PACKAGE_DIR / "Editor"),
                   references=[engine, editor_api, core_build.core, runtime])
    compile_csharp(tmp_path / "AvatarBackend.Client.Samples.dll", sources(PACKAGE_DIR / "Samples~"),
                   references=[engine, core_build.core, runtime])


def read_asmdef(folder: Path) -> dict:
    [asmdef] = folder.glob("*.asmdef")
    return json.loads(asmdef.read_text())


def test_assembly_definitions_keep_core_engine_free_and_editor_code_out_of_players():
    core = read_asmdef(PACKAGE_DIR / "Runtime" / "Core")
    assert core["name"] == "AvatarBackend.Client.Core"
    assert core["noEngineReferences"] is True and core["allowUnsafeCode"] is True and core["references"] == []
    runtime = read_asmdef(PACKAGE_DIR / "Runtime" / "Unity")
    assert runtime["name"] == "AvatarBackend.Client"
    assert set(runtime["references"]) == {"AvatarBackend.Client.Core", "UnityEngine.UI"}
    editor = read_asmdef(PACKAGE_DIR / "Editor")
    assert editor["includePlatforms"] == ["Editor"]
    assert {"AvatarBackend.Client.Core", "AvatarBackend.Client"} <= set(editor["references"])
    # The generated contract compiles only where a project asks for it and brings Google.Protobuf and
    # Grpc.Core.Api (CI has neither): never by default, so importing the package cannot fail for them.
    contract = read_asmdef(PACKAGE_DIR / "Runtime" / "Contract")
    assert contract["name"] == "AvatarBackend.Contract" and contract["defineConstraints"] == [
        "AVATAR_BACKEND_MANAGED_GRPC"]
    assert set(contract["precompiledReferences"]) == {"Google.Protobuf.dll", "Grpc.Core.Api.dll"}
    # Every script belongs to one of the assemblies compiled above or to the contract's (Unity would put a
    # stray one elsewhere).
    owned = [PACKAGE_DIR / "Runtime" / "Core", PACKAGE_DIR / "Runtime" / "Unity", PACKAGE_DIR / "Editor",
             PACKAGE_DIR / "Samples~", PACKAGE_DIR / "Runtime" / "Contract"]
    strays = [p for p in PACKAGE_DIR.rglob("*.cs") if not any(folder in p.parents for folder in owned)]
    assert not strays


def test_package_manifest_and_link_xml_name_the_assemblies(core_build):
    manifest = json.loads((PACKAGE_DIR / "package.json").read_text())
    assert manifest["name"] == "com.avatarbackend.client"
    assert manifest["dependencies"].get("com.unity.ugui")
    for sample in manifest["samples"]:
        assert (PACKAGE_DIR / sample["path"]).is_dir(), sample
    link = (PACKAGE_DIR / "link.xml").read_text()
    # IL2CPP strips what nothing references by name; the P/Invoke layer is reached from native code and by
    # reflection in diagnostics, so its assembly is kept whole.
    assert '<assembly fullname="AvatarBackend.Client.Core" preserve="all"' in link
    # Installed from git or a registry, link.xml is not read: the types carry [Preserve] themselves.
    run_suite(core_build, "StrippingTests")


# --- the C ABI --------------------------------------------------------------------------------------------

def test_structs_constants_and_functions_match_the_header_as_gcc_lays_it_out(core_build, tmp_path):
    expected = header_abi_lines(tmp_path)
    dumped = core_build.run_tests("abi")
    assert dumped.returncode == 0, dumped.stdout
    actual = set(dumped.stdout.splitlines())
    assert any(line.startswith("field avb_event.detail") for line in expected), "the header parser found no fields"
    missing, extra = sorted(expected - actual), sorted(actual - expected)
    assert not missing and not extra, f"in the header only: {missing}\nin the C# only: {extra}"


# --- the engine-independent C# under mono ------------------------------------------------------------------

def test_echoed_voice_playback_and_av_clock(core_build):
    run_suite(core_build, "AvClockTests")


def test_voice_chunking_and_resampling(core_build):
    run_suite(core_build, "VoiceChunkerTests")


def test_reconnect_policy(core_build):
    run_suite(core_build, "ReconnectPolicyTests")


def test_pinvoke_layer_client_and_session_through_a_scripted_core(core_build):
    # The fake is built as libavatar_client.so next to the test program, where mono looks first.
    compile_c_library(CORE_TESTS_DIR / "fake_avatar_client.c", core_build.directory / "libavatar_client.so")
    run_suite(core_build, "FakeCoreTests")


def test_a_failing_check_fails_the_suite(core_build, tmp_path):
    """The runner reports a failed C# check as a failure, so the suites above can fail."""
    probe = tmp_path / "Probe.cs"
    probe.write_text("namespace AvatarBackend.Client.Tests { public static class ProbeTests {\n"
                     "  public static void Fails() { Check.Equal(1, 2, \"one is two\"); }\n"
                     "  public static void AllocationIsSeen() { Check.AllocatesNothing(() => new byte[64].ToString(), \"alloc\"); }\n"
                     "} }\n")
    tests = compile_csharp(tmp_path / "CoreTests.exe", [*sources(CORE_TESTS_DIR), str(probe)],
                           references=[core_build.core, Path("System.Core")], executable=True)
    (tmp_path / core_build.core.name).write_bytes(core_build.core.read_bytes())
    result = CoreBuild(tmp_path, tmp_path / core_build.core.name, tests).run_tests("ProbeTests")
    assert result.returncode == 1
    assert "FAIL ProbeTests.Fails: one is two: expected 1, got 2" in result.stdout
    assert "FAIL ProbeTests.AllocationIsSeen: alloc: allocated" in result.stdout
