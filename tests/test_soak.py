"""The soak in CI: six migrations relayed between qemu-hmp processes: plain, compressed and
multifd in turn, so a worker or channel thread left behind shows in the counts.

Bounds: no thread or file descriptor left on either side after a migration (zero growth), and
peak RSS of the last relayed process within RSS_BOUND_KIB of the first's.
"""

from __future__ import annotations

import json
from pathlib import Path

from hmp.lab import soak


def test_six_migrations_relay_without_growth(tmp_path: Path, capsys) -> None:
    report = tmp_path / "soak.json"
    assert soak.main(["-n", "6", "-m", "8M", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "6/6 migrations completed with matching digests" in out and "PASS" in out
    rounds = json.loads(report.read_text())["rounds"]
    assert [r["mode"] for r in rounds] == ["plain", "compress", "multifd"] * 2
    for r in rounds:
        assert r["ok"] and r["src_status"] == r["dst_status"] == "completed"
        for role in ("src", "dst"):
            before, after = r[f"{role}_before"], r[f"{role}_after"]
            assert after["threads"] <= before["threads"] and after["fds"] <= before["fds"]
        assert r["info_calls"] >= 2 and r["samples"]
