"""ops/bench --quick keeps working: it runs every contender and writes the JSON shape that
docs/PERFORMANCE.md's figures are rendered from. No speed is asserted: speed targets live in
the benchmark, never in tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, clean_env

pytestmark = pytest.mark.slow  # a real benchmark over every contender

SUMMARY_KEYS = {
    "single_vs_raw",
    "vs_mlx_lm_server",
    "kv8_vs_mlx_lm_server",
    "ours_c4_vs_c1",
    "engine_c4_vs_c1",
    "vs_engine",
    "ttft_2000_vs_mlx_lm_server",
    "idle_rss_vs_mlx_lm_server",
    "single_stream",
    "sweep",
    "prompt_ttft_ms",
    "memory",
    "targets",
}


def run_quick(tiny_model: Path, out: Path) -> tuple[subprocess.CompletedProcess[str], Any]:
    argv = [sys.executable, str(ROOT / "ops" / "bench.py"), "--quick", "--model", str(tiny_model)]
    done = subprocess.run(
        [*argv, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        env=clean_env(),
    )
    return done, json.loads(out.read_text()) if out.exists() else None


def test_quick_bench_writes_every_contender_and_the_summary(
    tiny_model: Path, tmp_path: Path
) -> None:
    done, report = run_quick(tiny_model, tmp_path / "bench.json")
    assert done.returncode == 0, done.stderr + done.stdout
    assert report is not None

    summary = report["summary"]
    assert summary.keys() >= SUMMARY_KEYS
    assert set(summary["vs_mlx_lm_server"]) == {"1", "4"}
    assert set(summary["kv8_vs_mlx_lm_server"]) == {"1", "4"}
    # --quick runs prompt length 128 only: the 2000-token ratio is there, and empty.
    assert summary["ttft_2000_vs_mlx_lm_server"] is None
    assert isinstance(summary["single_vs_raw"], float)
    assert isinstance(summary["idle_rss_vs_mlx_lm_server"], float)

    samples = report["samples"]
    assert {s["contender"] for s in samples} == {"raw", "engine", "ours", "mlx_lm.server"}
    engine = [s for s in samples if s["contender"] == "engine"]
    # The batched-engine anchor: unquantized sweep only, one stream sample per concurrency.
    assert sorted((s["kv_bits"], s["concurrency"], s["kind"]) for s in engine) == [
        (None, 1, "stream"),
        (None, 4, "stream"),
    ]
    assert isinstance(summary["engine_c4_vs_c1"], float)
    for contender in ("ours", "mlx_lm.server"):
        mine = [s for s in samples if s["contender"] == contender and s["kind"] == "stream"]
        assert {(s["kv_bits"], s["concurrency"]) for s in mine} == {
            (None, 1),
            (None, 4),
            (8, 1),
            (8, 4),
        }
    assert all(s["ok"] and s["tokens"] > 0 and s["ttft_ms"] for s in samples)
    assert {m["contender"] for m in report["memory"]} == {"ours", "mlx_lm.server"}

    # The markdown table on stdout marks every target.
    assert "### Targets" in done.stdout
    assert "QUICK" in done.stdout
    for target in summary["targets"]:
        assert target["verdict"] in done.stdout
