"""buf lint and buf breaking hold on proto/, and each of them fails when the contract breaks its rules.

./buildall.sh test runs both checks before pytest; these tests prove that the checks can fail (on copies of
proto/ broken on purpose), that buf.yaml's lint exceptions stay in their file, that the breaking exceptions
are dropped once the baseline no longer needs them, and that the committed baseline is the contract of the
commit it names.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
from contract_helpers import BREAKING_BASELINE, PROTO_DIR, REPO_ROOT, copy_of_repo_protos, run
from google.protobuf import descriptor_pb2

BUF_FAILED_CHECK = 100   # buf's exit status for lint or breaking findings (1 is a usage or build error)


def findings(output: str) -> list[dict]:
    """buf's --error-format=json findings: one JSON object per line."""
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} should occur once in {path.name}"
    path.write_text(text.replace(old, new))


def descriptor_set(path: Path) -> descriptor_pb2.FileDescriptorSet:
    """A buf image read as the FileDescriptorSet it extends."""
    return descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())


def test_lint_passes(buf: str) -> None:
    result = run([buf, "lint"], cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout


def test_lint_rejects_violations_and_keeps_the_exceptions_to_their_file(buf: str, tmp_path: Path) -> None:
    root = copy_of_repo_protos(tmp_path)
    converse = root / "proto" / "avatar" / "v1" / "converse.proto"
    converse.write_text(converse.read_text() + (
        "\nmessage LintProbe {\n  uint32 badName = 1;\n}\n"
        # The RPC naming exceptions cover avatar_service.proto only: a service elsewhere gets the full rules.
        "\nservice LintProbeService {\n  rpc Probe(VideoFormat) returns (VideoFormat);\n}\n"))

    result = run([buf, "lint", "--error-format=json"], cwd=root)

    assert result.returncode == BUF_FAILED_CHECK, result.stdout
    rules = {finding["type"] for finding in findings(result.stdout)}
    assert {"FIELD_LOWER_SNAKE_CASE", "RPC_REQUEST_STANDARD_NAME", "RPC_RESPONSE_STANDARD_NAME",
            "RPC_REQUEST_RESPONSE_UNIQUE"} <= rules, result.stdout
    assert {finding["path"] for finding in findings(result.stdout)} == {"proto/avatar/v1/converse.proto"}


def test_breaking_passes_against_the_baseline(buf: str) -> None:
    result = run([buf, "breaking", "--against", str(BREAKING_BASELINE)], cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(("proto_file", "old", "new", "rule"), [
    pytest.param("converse.proto", "uint64 pts = 2;", "uint64 pts = 22;", "FIELD_NO_DELETE",
                 id="renumbered-field"),
    pytest.param("converse.proto", "bool keyframe = 7;", "bool key_frame = 7;", "FIELD_SAME_NAME",
                 id="renamed-field"),
    pytest.param("avatar_service.proto", "rpc GetNpc(", "rpc FetchNpc(", "RPC_NO_DELETE",
                 id="renamed-rpc"),
])
def test_breaking_rejects_a_broken_contract(buf: str, tmp_path: Path, proto_file: str, old: str, new: str,
                                            rule: str) -> None:
    root = copy_of_repo_protos(tmp_path)
    replace_once(root / "proto" / "avatar" / "v1" / proto_file, old, new)

    result = run([buf, "breaking", "--against", str(BREAKING_BASELINE), "--error-format=json"], cwd=root)

    assert result.returncode == BUF_FAILED_CHECK, result.stdout
    assert rule in {finding["type"] for finding in findings(result.stdout)}, result.stdout


def test_breaking_exceptions_are_still_needed(buf: str, tmp_path: Path) -> None:
    """A FILE_SAME_<option> rule left out of buf.yaml's breaking rules must still differ from the baseline."""
    def rule_ids(*flags: str) -> set[str]:
        result = run([buf, "config", "ls-breaking-rules", "--format=json", *flags], cwd=REPO_ROOT)
        assert result.returncode == 0, result.stdout
        return {rule["id"] for rule in findings(result.stdout) if "FILE" in rule["categories"]}

    excepted = sorted(rule for rule in rule_ids() - rule_ids("--configured-only")
                      if rule.startswith("FILE_SAME_"))
    built = run([buf, "build", "--path", "proto/avatar/v1", "-o", str(tmp_path / "current.binpb")],
                cwd=REPO_ROOT)
    assert built.returncode == 0, built.stdout
    baseline = {f.name: f.options for f in descriptor_set(BREAKING_BASELINE).file}
    current = {f.name: f.options for f in descriptor_set(tmp_path / "current.binpb").file}

    def option_value(options: descriptor_pb2.FileOptions, option: str) -> tuple[bool, object]:
        return options.HasField(option), getattr(options, option)

    stale = []
    for rule in excepted:
        option = rule.removeprefix("FILE_SAME_").lower()
        assert option in descriptor_pb2.FileOptions.DESCRIPTOR.fields_by_name, rule
        if all(option_value(options, option) == option_value(baseline[name], option)
               for name, options in current.items() if name in baseline):
            stale.append(rule)
    assert not stale, (f"the baseline already has the current value for {stale}: remove them from "
                       "breaking.except in buf.yaml")


def test_baseline_is_the_contract_of_its_recorded_commit(buf: str, tmp_path: Path) -> None:
    commit = (PROTO_DIR / "breaking-baseline.commit").read_text().strip()
    if run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=REPO_ROOT).returncode != 0:
        pytest.skip(f"commit {commit} is not in this clone (shallow?)")
    archive = subprocess.run(["git", "archive", commit, "proto"], cwd=REPO_ROOT, capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tmp_path)
    (tmp_path / "buf.yaml").write_bytes((REPO_ROOT / "buf.yaml").read_bytes())

    # The same build as `./buildall.sh breaking-baseline`.
    built = run([buf, "build", "--path", "proto/avatar/v1", "--exclude-source-info", "-o", "image.binpb"],
                cwd=tmp_path)

    assert built.returncode == 0, built.stdout
    assert (tmp_path / "image.binpb").read_bytes() == BREAKING_BASELINE.read_bytes(), (
        f"{BREAKING_BASELINE.name} is not the contract of {commit}: run ./buildall.sh breaking-baseline REF")
