"""``avatar-backend soak`` against a real server (serve's gateway and worker processes, the tiny model with its
shipped weights): NPCs talk at real-time pace over gRPC, a session ends and the NPC resumes, and the report
holds every process's memory and the video's lead per window."""

from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="soak reads /proc")

from avatar_backend.cli import main  # noqa: E402
from avatar_backend.cli.soak import growth_of, slope_of  # noqa: E402


def test_soak_reports_memory_frames_and_a_bounded_video_lead(tmp_path, capsys):
    out = tmp_path / "soak.json"
    assert main(["soak", "--minutes", "0.9", "--npcs", "1", "--session-seconds", "36", "--window-seconds", "9",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    windows = report["windows"]
    assert len(windows) == 6 and report["fps"] == 20 and not report["random_weights"]
    for row in windows:
        assert {"gateway", "worker"} <= set(row["rss_mib"]) and all(mib > 20 for mib in row["rss_mib"].values())
        if not row["sessions_opened"]:
            # Real time: about the frames due, a block (32 frames) more or less at the window's edges. (A
            # session's start sends its first blocks ahead of the clock, and the old session's last ones.)
            assert abs(row["frames_received"] - row["frames_due"]) <= 64
    assert sum(row["frames_received"] for row in windows) >= 0.95 * sum(row["frames_due"] for row in windows)
    assert report["frames_missing"] == 0
    # The NPC's second session resumed its memory.
    assert [row["sessions_resumed"] for row in windows] == [0, 0, 0, 0, 1, 0]
    # The video's lead on the session clock stays under two blocks and the jitter budget (and the margins):
    # each utterance's pause is as long as it was on the clock, not padded to a block, which made the lead
    # 3 s longer every 9 s (7 s and more by the fourth window). Within that bound it moves: measured pauses
    # err short, so it shrinks, until an utterance has to wait for its block again.
    assert max(row["video_lead_median_ms"] for row in windows) < 4200
    assert set(report["rss_growth_mib"]) >= {"gateway", "worker"}
    assert set(report["rss_slope_mib_per_min"]) >= {"gateway", "worker"}
    printed = capsys.readouterr().out
    assert "RSS from the second window to the last: gateway" in printed
    assert "RSS trend, MiB per minute (least squares from the second window): gateway" in printed


def test_the_trend_sees_through_one_windows_spike_that_the_two_point_growth_reports():
    def window(index: int, mib: float) -> dict:
        return {"start_s": 60.0 * index, "end_s": 60.0 * (index + 1), "rss_mib": {"worker": mib}}

    # Flat for 12 minutes after the warm-up window, then one window's allocator holds 30 MiB more.
    flat_then_spike = [window(i, mib) for i, mib in enumerate([400] + [500, 501, 499] * 4 + [530])]
    assert growth_of(flat_then_spike) == {"worker": 30.0}
    assert abs(slope_of(flat_then_spike)["worker"]) < 1.5
    leaking = [window(i, 500 + 2.5 * i) for i in range(8)]
    assert slope_of(leaking) == {"worker": 2.5}
    assert slope_of(leaking[:2]) == {}
