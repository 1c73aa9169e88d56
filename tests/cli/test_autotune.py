"""`autotune` end to end: the real command, real providers on the fixture models, a real DB.

Runs are kept short: a 32-token target, 8 generated tokens, and one Stage 2 cell unless a
test is about the axes. The memory budget (`--provider-memory-limit-gb`) makes a fixture not
fit deterministically: 0.08 GB rejects `large` (≈0.097 GB at any knobs) and admits `medium`.
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import socket
import subprocess
import threading
from pathlib import Path

import psutil
import pytest
from jsonschema import Draft202012Validator

from macprovider.actors.exit_reasons import ExitReason
from macprovider.actors.store import Store
from macprovider.actors.store_records import StoredTrial
from macprovider.cli.autotune_json import load_schema
from macprovider.cli.size_text import bytes_text
from macprovider.server.config import resolve_serve_config
from tests.cli.autotune_runs import (
    FITS_MEDIUM_NOT_LARGE,
    ONE_CELL,
    QUICK,
    RUN_TIMEOUT,
    Autotune,
    Finished,
    Models,
)
from tests.conftest import clean_env, model_variant, supervise_argv, wait_until

pytestmark = pytest.mark.slow  # whole `autotune` runs as subprocesses over real providers


def test_largest_first_stops_at_the_first_fit_and_never_probes_the_rest(
    autotune: Autotune, models: Models, fixtures_dir: Path
) -> None:
    done = autotune.run(
        "--candidate-models", models("large", "medium", "tiny"), *QUICK, *ONE_CELL,
        *FITS_MEDIUM_NOT_LARGE,
    )  # fmt: skip
    assert done.code == 0, done.stderr
    stage1 = done.trials(stage=1)
    assert [row.record.model for row in stage1] == [models("large"), models("medium")]
    large, medium = (row.record for row in stage1)
    assert not large.fits and large.notes is not None and "out of memory" in large.notes
    assert medium.fits and medium.measured_prompt_tokens == 32
    assert "RECOMMENDATION" in done.stdout and f"model:           {models('medium')}" in done.stdout
    assert f"alternates:      {models('tiny')}" in done.stdout
    # Nothing about tiny ran: no trial, no provider log.
    assert not list((autotune.state_dir / "logs").glob("*tiny*"))
    [kept] = [row for row in done.trials(stage=2) if row.kept]
    assert kept.record.model == models("medium")
    assert done.runs()[-1].exit_reason is ExitReason.OK


def test_all_infeasible_reports_the_smallest_first_and_exits_non_zero(
    autotune: Autotune, models: Models
) -> None:
    done = autotune.run(
        "--candidate-models", models("small", "large", "tiny"), *QUICK, *ONE_CELL,
        "--provider-memory-limit-gb", "0.001",
    )  # fmt: skip
    assert done.code == 2, done.stderr
    lines = [line.strip() for line in done.stdout.splitlines()]
    assert lines[0] == "NO RECOMMENDATION (no_feasible)"
    reasons = [line for line in lines if "(candidate " in line]
    assert [line.split(" (candidate ")[0] for line in reasons] == [
        models("tiny"),
        models("small"),
        models("large"),
    ]
    assert all("out of memory" in line for line in reasons)
    assert "smaller --target-context" in done.stdout
    run = done.runs()[-1]
    assert run.exit_reason is ExitReason.NO_FEASIBLE and run.recommendation_json is None
    assert not done.trials(stage=2)


def test_the_operator_order_is_the_contract(autotune: Autotune, models: Models) -> None:
    done = autotune.run("--candidate-models", models("small", "large"), *QUICK, *ONE_CELL)
    assert done.code == 0, done.stderr
    assert [row.record.model for row in done.trials(stage=1)] == [models("small")]
    assert "alternates:      (none of the same size or smaller)" in done.stdout


def test_a_larger_context_cell_can_win_and_stage2_rows_cover_the_axes(
    autotune: Autotune, models: Models
) -> None:
    # A 32-token cap leaves a 32-token prompt room for one token: the 64 cell must win.
    done = autotune.run(
        "--candidate-models", models("tiny"), *QUICK,
        "--kv-bits-axis", "unset,8", "--max-batch-axis", "1", "--max-context-axis", "64,32",
    )  # fmt: skip
    assert done.code == 0, done.stderr
    stage2 = [row.record for row in done.trials(stage=2)]
    assert [(row.kv_bits, row.max_batch, row.max_context) for row in stage2] == [
        (None, 1, 32),
        (None, 1, 64),
        (8, 1, 32),
        (8, 1, 64),
    ]
    [kept] = [row.record for row in done.trials(stage=2) if row.kept]
    assert kept.max_context == 64
    assert "--max-context 64" in done.stdout


def test_a_context_cell_below_the_target_is_a_config_error_before_anything(
    autotune: Autotune, models: Models
) -> None:
    done = autotune.run("--candidate-models", models("tiny"), *QUICK, "--max-context-axis", "16")
    assert done.code == 64
    assert "--max-context-axis: cell 1 '16' is below --target-context 32" in done.stderr
    assert "Traceback" not in done.stderr
    assert not autotune.db_path.exists() and not autotune.state_dir.exists()


def test_dry_run_prints_the_plan_and_touches_nothing(autotune: Autotune, models: Models) -> None:
    done = autotune.run(
        "--candidate-models", models("medium", "tiny"), *QUICK, "--max-model-size", "3",
        "--dry-run",
    )  # fmt: skip
    assert done.code == 0, done.stderr
    assert "--max-model-size 3 ignored: the explicit --candidate-models list" in done.stderr
    medium_bytes = (Path(models("medium")) / "model.safetensors").stat().st_size
    assert f"1. {models('medium')}  (10.2M parameters, {bytes_text(medium_bytes)} on disk)" in (
        done.stdout
    )
    assert (
        "Stage 2: 6 cells" in done.stdout
        and "6. kv-bits 8, max-batch 2, max-context 40" in done.stdout
    )
    assert not autotune.db_path.exists() and not autotune.state_dir.exists()


def test_a_transient_prewarm_failure_moves_on(
    autotune: Autotune, models: Models, tmp_path: Path
) -> None:
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        hub = f"http://127.0.0.1:{closed.getsockname()[1]}"
        env = clean_env(HF_ENDPOINT=hub, HF_HUB_CACHE=str(tmp_path / "hf"), HF_HUB_ETAG_TIMEOUT="2")
        done = autotune.run(
            "--candidate-models", f"nobody/not-cached,{models('tiny')}", *QUICK, *ONE_CELL,
            env=env,
        )  # fmt: skip
    assert done.code == 0, done.stderr
    first, second = (row.record for row in done.trials(stage=1))
    assert first.model == "nobody/not-cached" and not first.fits
    assert first.notes is not None and first.notes.startswith("pre-warm transient:")
    assert second.model == models("tiny") and second.fits


@pytest.mark.parametrize(
    ("broken", "replaced"),
    [("missing tokenizer.json", None), ("truncated weights", "model.safetensors")],
)
def test_an_integrity_failure_aborts_the_run(
    autotune: Autotune,
    models: Models,
    tiny_model: Path,
    tmp_path: Path,
    broken: str,
    replaced: str | None,
) -> None:
    variant = tmp_path / "broken"
    if replaced is None:
        model_variant(tiny_model, variant, {})
        (variant / "tokenizer.json").unlink()
    else:
        data = (tiny_model / replaced).read_bytes()
        model_variant(tiny_model, variant, {replaced: data[: len(data) // 2]})
    done = autotune.run("--candidate-models", f"{variant},{models('tiny')}", *QUICK, *ONE_CELL)
    assert done.code == 65, done.stderr
    assert "NO RECOMMENDATION (pre_warm_integrity_failure)" in done.stdout
    [row] = done.trials()
    assert row.record.model == str(variant) and not row.record.fits
    assert row.record.notes is not None and "pre-warm integrity failure" in row.record.notes
    assert done.runs()[-1].exit_reason is ExitReason.PRE_WARM_INTEGRITY_FAILURE


def _providers_on(port: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "serve" in cmdline and str(port) in cmdline:
            found.append(process)
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_sigint_mid_run_leaves_nothing_behind_and_the_next_run_starts(
    autotune: Autotune, models: Models
) -> None:
    # Many long replicates: Ctrl-C lands while Stage 2 measures.
    args = ("--candidate-models", models("small"), "--target-context", "64",
            "--probe-max-tokens", "64", "--stage2-replicates", "50", *ONE_CELL)  # fmt: skip
    proc = subprocess.Popen(
        autotune.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env()
    )
    try:
        wait_until(
            lambda: autotune.db_path.exists() and bool(_stage1_rows(autotune.db_path)),
            RUN_TIMEOUT,
            "the Stage 1 trial to be recorded",
        )
        wait_until(lambda: not _port_free(autotune.port), 60, "the Stage 2 provider to listen")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr.decode()
    assert not _providers_on(autotune.port)
    assert _port_free(autotune.port)
    finished = Finished(proc.returncode, "", "", autotune.db_path)
    run = finished.runs()[-1]
    assert run.exit_reason is ExitReason.INTERRUPTED and run.ended_at is not None
    [in_flight] = finished.trials(stage=2)
    assert not in_flight.record.fits
    assert in_flight.record.notes is not None and "interrupted" in in_flight.record.notes
    store = Store(autotune.db_path)
    try:
        assert store.integrity_ok()
    finally:
        store.close()

    again = autotune.run("--candidate-models", models("tiny"), *QUICK, *ONE_CELL)
    assert again.code == 0, again.stderr
    assert [r.exit_reason for r in again.runs()] == [ExitReason.INTERRUPTED, ExitReason.OK]


def _stage1_rows(db_path: Path) -> list[StoredTrial]:
    store = Store(db_path)
    try:
        runs = store.runs()
        return (
            [t for t in store.trials(runs[-1].start.run_id) if t.record.stage == 1] if runs else []
        )
    finally:
        store.close()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max-duration", "nan", "'nan' is not a finite number"),
        ("--tps-tie-epsilon", "-0.1", "-0.1 is not in the range x>=0"),
        ("--stage2-replicates", "0", "0 is not in the range x>=1"),
        ("--kv-bits-axis", "4,,8", "--kv-bits-axis: cell 2 '' is empty"),
        ("--max-batch-axis", "1,1", "--max-batch-axis: cell 2 '1' duplicates cell 1"),
        ("--kv-bits-axis", "6", "--kv-bits-axis: cell 1 '6' must be 4, 8 or unset"),
    ],
)
def test_a_bad_flag_exits_64_before_anything(
    autotune: Autotune, models: Models, flag: str, value: str, message: str
) -> None:
    done = autotune.run("--candidate-models", models("tiny"), *QUICK, flag, value)
    assert done.code == 64
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not autotune.db_path.exists() and not autotune.state_dir.exists()


def test_a_relative_models_folder_exits_64_before_anything(autotune: Autotune) -> None:
    done = autotune.run(
        "--candidate-models", "some-imported-name", *QUICK,
        env=clean_env(MACPROVIDER_MODELS_DIR="models"),
    )  # fmt: skip
    assert done.code == 64, done.stderr
    assert "MACPROVIDER_MODELS_DIR 'models'" in done.stderr and "Traceback" not in done.stderr
    assert not autotune.db_path.exists() and not autotune.state_dir.exists()


def test_a_budget_spent_in_stage1_selects_no_model(autotune: Autotune, models: Models) -> None:
    done = autotune.run("--candidate-models", models("tiny"), *QUICK, "--max-duration", "0.001")
    assert done.code == 3, done.stderr
    assert "NO RECOMMENDATION (budget_exhausted_no_model_selected)" in done.stdout
    run = done.runs()[-1]
    assert run.exit_reason is ExitReason.BUDGET_EXHAUSTED_NO_MODEL_SELECTED
    assert run.recommendation_json is None


def test_json_is_the_only_stdout_and_matches_the_schema(autotune: Autotune, models: Models) -> None:
    done = autotune.run("--candidate-models", models("tiny"), *QUICK, *ONE_CELL, "--json", "-v")
    assert done.code == 0, done.stderr
    document = json.loads(done.stdout)  # nothing else on stdout
    Draft202012Validator(load_schema()).validate(document)
    assert document["exit_reason"] == "ok" and document["partial"] is False
    assert document["recommendation"]["knobs"] == {
        "kv_bits": None,
        "max_concurrency_override": 1,
        "max_context_override": 40,
    }
    assert "--kv-bits" not in document["recommendation"]["serve_command"]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", document["recipe_hash"])
    assert done.runs()[-1].recipe_hash == document["recipe_hash"]
    # Plain progress on stderr (not a terminal), and with -v each trial's figures.
    assert "stage 1: biggest model that fits" in done.stderr
    assert "stage 2 [1/1]" in done.stderr and "tok/s" in done.stderr


def test_report_only_and_compare_read_the_database(autotune: Autotune, models: Models) -> None:
    first = autotune.run("--candidate-models", models("tiny"), *QUICK, *ONE_CELL)
    assert first.code == 0, first.stderr
    again = autotune.run("--report-only")
    assert again.code == 0 and again.stdout == first.stdout  # the same block, from the DB
    assert (
        not list((autotune.state_dir / "logs").glob("*"))
        or len(list((autotune.state_dir / "logs").glob("*"))) == 2
    )  # no provider started by --report-only (two from the run)
    second = autotune.run("--candidate-models", models("tiny"), *QUICK, *ONE_CELL, "--compare")
    first_id = first.runs()[0].start.run_id  # read after both runs: the older one
    assert f"COMPARED WITH run {first_id}" in second.stdout
    assert "--max-batch:     1 (unchanged)" in second.stdout


def test_report_only_without_a_database_exits_66(autotune: Autotune) -> None:
    done = autotune.run("--report-only")
    assert done.code == 66
    assert f"no autotune database at {autotune.db_path}" in done.stderr
    assert "Traceback" not in done.stderr


CONFIG_YAML = """\
# the operator's own notes
port: 18080
provider_token: "tok-123"   # keep me
kv_bits: 4

nested:
  coordinator_endpoint: https://pool.example
"""


def test_apply_writes_the_owned_keys_only_and_records_it(
    autotune: Autotune, models: Models, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG_YAML)
    config.chmod(0o600)
    args = ("--candidate-models", models("tiny"), *QUICK, *ONE_CELL, "--apply")
    done = autotune.run(*args, "--config", str(config))
    assert done.code == 0, done.stderr
    [backup] = tmp_path.glob("config.yaml.bak-*-0")
    assert done.stdout.splitlines()[-1] == f"applied: {config} (backup: {backup})"
    assert backup.read_text() == CONFIG_YAML and backup.stat().st_mode & 0o777 == 0o600
    text = config.read_text()
    assert text.startswith("# the operator's own notes\nport: 18080\n")
    assert 'provider_token: "tok-123"   # keep me\n' in text and "kv_bits" not in text
    assert f"model: {models('tiny')}\n" in text and "max_context_override: 40\n" in text
    assert "systemctl --user restart macprovider.service" in done.stderr
    assert done.runs()[-1].applied
    resolved = resolve_serve_config({"config": str(config)}, {}, ram_bytes=24 * 10**9)
    assert (resolved.model, resolved.kv_bits, resolved.max_context, resolved.max_batch) == (
        models("tiny"), None, 40, 1,
    )  # fmt: skip


def test_a_partial_recommendation_is_not_applied(
    autotune: Autotune, models: Models, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG_YAML)
    first = autotune.run("--candidate-models", models("tiny"), *QUICK, *ONE_CELL)
    assert first.code == 0
    store = Store(autotune.db_path)
    try:  # make the stored run look cut short by the budget
        store._conn.execute(
            "UPDATE tune_runs SET exit_reason = 'budget_exhausted_with_partial_recommendation'"
        )
    finally:
        store.close()
    done = autotune.run("--report-only", "--apply", "--config", str(config))
    assert done.code == 0
    assert "RECOMMENDATION (PARTIAL" in done.stdout
    assert "not applied: the run ended with a PARTIAL recommendation" in done.stderr
    assert config.read_text() == CONFIG_YAML and not list(tmp_path.glob("*.bak-*"))


def test_report_writes_the_html_page(autotune: Autotune, models: Models, tmp_path: Path) -> None:
    done = autotune.run("--candidate-models", models("tiny"), *QUICK, "--kv-bits-axis", "unset,8")
    assert done.code == 0, done.stderr
    page = tmp_path / "run.html"
    shown = subprocess.run(
        supervise_argv("report", "--db-path", str(autotune.db_path), "--html", str(page)),
        capture_output=True, text=True, env=clean_env(), timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == done.stdout.split("\napplied:")[0]
    html = page.read_text()
    assert "<svg" in html and html.count("<table") >= 2


def test_a_terminal_gets_a_live_progress_line(autotune: Autotune, models: Models) -> None:
    leader, follower = pty.openpty()
    argv = autotune.argv("--candidate-models", models("tiny"), *QUICK, *ONE_CELL)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=follower, env=clean_env())
    os.close(follower)  # the child holds its own copy; EOF comes when it exits
    chunks: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(leader, chunks))
    reader.start()  # a full terminal buffer would block the child: read while it runs
    try:
        stdout, _ = proc.communicate(timeout=RUN_TIMEOUT)
        reader.join(timeout=10)
    finally:
        os.close(leader)
    seen = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0
    assert "budget left" in seen and "stage 2 · cell 1/1" in seen
    assert "RECOMMENDATION" in stdout.decode()


def _drain(fd: int, chunks: list[bytes]) -> None:
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            return
        if not chunk:
            return
        chunks.append(chunk)
