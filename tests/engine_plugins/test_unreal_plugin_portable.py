"""The Unreal plugin's engine-independent code and its wiring to the C ABI.

CI has no Unreal Engine, so the engine-facing code (UAvatarNpcComponent, the module, the procedural sound wave)
is not compiled here; see engine_plugins/unreal/README.md. What is checked: the standard C++ the component uses
unchanged (Private/Portable: echoed-voice playback and the A/V clock, voice chunking, voice positions across
Blueprint's int64) compiles with g++ under -Wall -Werror and passes its tests; the plugin's copy of the C header
is the core's; every avb_* function the plugin calls is one the header declares; the .uplugin and Build.cs
declare the module, its dependencies and the library of every platform.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from unity_plugin_build import HEADER, HEADER_INCLUDE_DIR, header_functions, run

REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIR = REPO_ROOT / "engine_plugins" / "unreal"
MODULE_DIR = PLUGIN_DIR / "Source" / "AvatarBackend"
PORTABLE_DIR = MODULE_DIR / "Private" / "Portable"
TESTS = Path(__file__).resolve().parent / "unreal_portable_tests" / "portable_tests.cpp"
PLUGIN_HEADER = PLUGIN_DIR / "ThirdParty" / "AvatarClient" / "include" / "avatar_backend" / "avatar_client.h"


@pytest.fixture(scope="module")
def gxx() -> str:
    path = shutil.which("g++")
    if path is None:
        pytest.skip("g++ is not installed (Debian package g++)")
    return path


def test_portable_code_compiles_warning_free_and_passes_its_tests(gxx, tmp_path):
    binary = tmp_path / "portable_tests"
    built = run([gxx, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{PORTABLE_DIR}",
                 "-o", str(binary), str(TESTS)])
    assert built.returncode == 0, built.stdout
    result = run([str(binary)])
    failures = [line for line in result.stdout.splitlines() if not line.startswith("PASS ")]
    assert result.returncode == 0, "\n".join(failures)
    assert "13 passed, 0 failed" in result.stdout, result.stdout


def test_portable_headers_stand_alone_beside_the_c_abi(gxx, tmp_path):
    """Each portable header compiles on its own and with the C header, as the component includes them."""
    for header in sorted(PORTABLE_DIR.glob("*.h")):
        source = tmp_path / f"{header.stem}_alone.cpp"
        source.write_text(f'#include "{header.name}"\n#include "avatar_backend/avatar_client.h"\nint main() {{ return 0; }}\n')
        built = run([gxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{PORTABLE_DIR}", f"-I{HEADER_INCLUDE_DIR}",
                     "-o", str(tmp_path / header.stem), str(source)])
        assert built.returncode == 0, f"{header.name}\n{built.stdout}"


def test_the_plugins_copy_of_the_c_header_is_the_cores():
    assert PLUGIN_HEADER.read_bytes() == HEADER.read_bytes(), (
        f"{PLUGIN_HEADER.relative_to(REPO_ROOT)} differs from {HEADER.relative_to(REPO_ROOT)}: copy the core's header")


def test_every_c_function_the_plugin_calls_is_declared_by_the_header():
    declared = set(header_functions(HEADER.read_text()))
    called = set()
    for source in MODULE_DIR.rglob("*.cpp"):
        called |= set(re.findall(r"\b(avb_\w+)\s*\(", source.read_text()))
    assert called, "the plugin calls no avb_* function"
    assert not called - declared, f"not in the header: {sorted(called - declared)}"
    # The component covers the session's whole surface, frames through stats.
    expected = {"avb_session_open", "avb_session_push_pcm", "avb_session_end_utterance", "avb_session_set_emotion",
                "avb_session_play_action", "avb_session_set_emotion_at", "avb_session_play_action_at",
                "avb_session_voice_samples_sent", "avb_session_set_listening", "avb_session_interrupt",
                "avb_session_playback_progress", "avb_session_poll_due_frame", "avb_session_poll_audio",
                "avb_session_poll_event", "avb_session_get_stats", "avb_session_close", "avb_session_destroy",
                "avb_client_destroy", "avb_abi_version"}
    assert expected <= called, f"not used: {sorted(expected - called)}"


def test_plugin_descriptor_and_build_rules_declare_the_module_and_every_platforms_library():
    descriptor = json.loads((PLUGIN_DIR / "AvatarBackend.uplugin").read_text())
    [module] = descriptor["Modules"]
    assert module["Name"] == "AvatarBackend" and module["Type"] == "Runtime"
    assert {"Name": "AudioCapture", "Enabled": True} in descriptor["Plugins"]
    rules = (MODULE_DIR / "AvatarBackend.Build.cs").read_text()
    assert "public class AvatarBackend : ModuleRules" in rules
    assert '"ThirdParty", "AvatarClient"' in rules and 'PublicSystemIncludePaths.Add(Path.Combine(ThirdPartyDir, "include"))' in rules
    for dependency in ("AudioCaptureCore", "Projects", "Engine"):
        assert f'"{dependency}"' in rules, dependency
    for platform, library in (("Win64", "avatar_client.lib"), ("Linux", "libavatar_client.so"),
                              ("Mac", "libavatar_client.dylib"), ("Android", "libavatar_client.so"),
                              ("IOS", "libavatar_client.a")):
        assert f"UnrealTargetPlatform.{platform}" in rules and library in rules, platform
        assert (PLUGIN_DIR / "ThirdParty" / "AvatarClient" / "lib" / platform).is_dir(), platform
    assert (MODULE_DIR / "AvatarBackend_APL.xml").is_file()
