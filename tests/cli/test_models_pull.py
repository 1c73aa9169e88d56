"""`models pull` against a Hub on loopback (tests/cli/hub_server.py): huggingface_hub's real
client does the transfer, our command maps its outcomes to lines and exit codes."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from macprovider.actors.prewarm_integrity import check_integrity
from macprovider.server.models import locate_model
from tests.cli.hub_server import COMMIT, FakeHub, repo_from_folder
from tests.conftest import clean_env, free_port, supervise_argv

REPO = "acme/tiny"
WEIGHTS = "model.safetensors"
TOKEN = "hf_secretsecretsecret"


@pytest.fixture
def hub(tiny_model: Path) -> Iterator[FakeHub]:
    hub = FakeHub()
    hub.repos[REPO] = repo_from_folder(tiny_model)
    yield hub
    hub.close()


def env_for(tmp_path: Path, endpoint: str, **extra: str) -> dict[str, str]:
    env = clean_env(
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_CACHE=str(tmp_path / "hf-cache"),
        HF_ENDPOINT=endpoint,
        MACPROVIDER_MODELS_DIR=str(tmp_path / "models"),
        HF_HUB_DISABLE_TELEMETRY="1",
        **extra,
    )
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        if name not in extra:
            env.pop(name, None)
    return env


def pull(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return supervise(env, "models", "pull", *args)


def supervise(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        supervise_argv(*args), env=env, capture_output=True, text=True, timeout=120
    )


def run_serve(env: dict[str, str], model: str) -> subprocess.CompletedProcess[str]:
    """`serve` as far as finding the model: it exits there when it cannot."""
    return supervise(
        {**env, "HF_HUB_OFFLINE": "1"}, "serve", "--model", model, "--port", str(free_port())
    )


def listed(env: dict[str, str]) -> list[dict[str, Any]]:
    done = supervise({**env, "HF_HUB_OFFLINE": "1"}, "models", "list", "--json")
    assert done.returncode == 0, done.stderr
    entries: list[dict[str, Any]] = json.loads(done.stdout)
    return entries


def snapshot(tmp_path: Path) -> Path:
    return tmp_path / "hf-cache" / "models--acme--tiny" / "snapshots" / COMMIT


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("macprovider-supervise: error: "), done.stderr
    return lines[0]


def test_a_pull_lands_a_complete_snapshot_that_serve_finds(
    hub: FakeHub, tmp_path: Path, tiny_model: Path
) -> None:
    done = pull(env_for(tmp_path, hub.url), REPO)

    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.strip())
    assert folder == snapshot(tmp_path)
    assert "ok: acme/tiny at" in done.stderr and "hashes verified" in done.stderr
    assert locate_model(REPO, cache_dir=tmp_path / "hf-cache") == folder
    report = check_integrity(folder)
    assert set(report.hashed_files) == set(hub.repos[REPO].files)  # every file was hashed
    assert (folder / WEIGHTS).read_bytes() == (tiny_model / WEIGHTS).read_bytes()
    # The weights came from the CDN, which gets no token (the Hub's own behaviour).
    assert [r.path for r in hub.logged() if r.server == "cdn" and r.method == "GET"] == [
        f"/cdn/{folder.joinpath(WEIGHTS).resolve().name}"
    ]


def test_a_second_pull_fetches_nothing(hub: FakeHub, tmp_path: Path) -> None:
    env = env_for(tmp_path, hub.url)
    assert pull(env, REPO).returncode == 0
    first = len(hub.logged())

    done = pull(env, REPO)

    assert done.returncode == 0, done.stderr
    again = hub.logged()[first:]
    assert [(r.method, r.path) for r in again] == [("GET", f"/api/models/{REPO}/revision/main")]


def test_a_file_served_damaged_is_taken_out_of_the_cache_and_the_next_pull_mends_it(
    hub: FakeHub, tmp_path: Path, tiny_model: Path
) -> None:
    env = env_for(tmp_path, hub.url)
    weights = bytearray(hub.repos[REPO].files[WEIGHTS])
    weights[-1] ^= 0xFF  # same size, so only the hash can tell
    hub.repos[REPO].served[WEIGHTS] = bytes(weights)
    repo_folder = tmp_path / "hf-cache" / "models--acme--tiny"

    damaged = pull(env, REPO)

    assert damaged.returncode == 65
    line = error_line(damaged)
    assert f"{WEIGHTS}: sha256 mismatch" in line
    assert line.endswith(f"; {WEIGHTS} removed from the cache; pull again")
    assert damaged.stdout == ""
    # Only that file's link and blob went: the other files and the repo's listing stay.
    kept = sorted(p.name for p in snapshot(tmp_path).iterdir())
    assert kept == sorted(set(hub.repos[REPO].files) - {WEIGHTS})
    assert len(list((repo_folder / "blobs").iterdir())) == len(kept)
    assert (repo_folder / "trees" / f"{COMMIT}.json").is_file()
    # So serve no longer finds the model, and `models list` says what it lacks.
    serve = run_serve(env, REPO)
    assert serve.returncode == 66
    assert "no complete snapshot in the Hugging Face cache" in error_line(serve)
    (entry,) = listed(env)
    assert entry["problem"].startswith(f"incomplete: {WEIGHTS} missing")

    hub.repos[REPO].served.clear()  # the Hub is mended
    mended = pull(env, REPO)

    assert mended.returncode == 0, mended.stderr
    assert Path(mended.stdout.strip()) == snapshot(tmp_path)
    assert (snapshot(tmp_path) / WEIGHTS).read_bytes() == (tiny_model / WEIGHTS).read_bytes()
    (entry,) = listed(env)
    assert entry["problem"] is None


def test_an_unknown_repo_is_not_found(hub: FakeHub, tmp_path: Path) -> None:
    done = pull(env_for(tmp_path, hub.url), "acme/nothing")

    assert done.returncode == 66
    assert f"no repo acme/nothing on {hub.url}" in error_line(done)


def test_an_unknown_revision_is_not_found(hub: FakeHub, tmp_path: Path) -> None:
    done = pull(env_for(tmp_path, hub.url), REPO, "--revision", "v9")

    assert done.returncode == 66
    assert "has no revision 'v9'" in error_line(done)


def test_a_file_the_hub_lists_but_cannot_serve_is_not_found(hub: FakeHub, tmp_path: Path) -> None:
    hub.repos[REPO].unserved.add("tokenizer.json")

    done = pull(env_for(tmp_path, hub.url), REPO)

    assert done.returncode == 66
    line = error_line(done)
    assert f"{hub.url} has no file tokenizer.json of {REPO} (404)" in line


def test_a_gated_repo_says_to_accept_its_conditions(hub: FakeHub, tmp_path: Path) -> None:
    hub.repos[REPO].gated = True

    done = pull(env_for(tmp_path, hub.url), REPO)

    assert done.returncode == 66
    line = error_line(done)
    assert f"{REPO} is gated on {hub.url}" in line and "HF_TOKEN" in line


def test_a_hub_server_error_is_unavailable(hub: FakeHub, tmp_path: Path) -> None:
    hub.repos[REPO].failing = 503

    done = pull(env_for(tmp_path, hub.url), REPO)

    assert done.returncode == 69
    assert f"{hub.url} answered 503 for {REPO}; try again later" in error_line(done)


@pytest.mark.parametrize("fault", ["no-repo", "server-error"])
def test_credentials_in_hf_endpoint_are_never_printed(
    hub: FakeHub, tmp_path: Path, fault: str
) -> None:
    with_credentials = hub.url.replace("http://", "http://operator:pa55word@")
    repo = "acme/nothing" if fault == "no-repo" else REPO
    hub.repos[REPO].failing = 500 if fault == "server-error" else None

    done = pull(env_for(tmp_path, with_credentials), repo)

    assert done.returncode == (66 if fault == "no-repo" else 69), done.stderr
    line = error_line(done)
    assert f" {hub.url}" in line  # the endpoint is still named, without what it carried
    assert "pa55word" not in done.stdout + done.stderr
    assert "operator" not in done.stdout + done.stderr


def test_a_repo_that_wants_a_token_says_so(hub: FakeHub, tmp_path: Path) -> None:
    hub.repos[REPO].token = TOKEN

    done = pull(env_for(tmp_path, hub.url), REPO)

    assert done.returncode == 66
    line = error_line(done)
    assert "(401)" in line and "HF_TOKEN" in line


def test_hf_token_reaches_the_hub_and_is_never_printed(hub: FakeHub, tmp_path: Path) -> None:
    hub.repos[REPO].token = TOKEN

    done = pull(env_for(tmp_path, hub.url, HF_TOKEN=TOKEN), REPO)

    assert done.returncode == 0, done.stderr
    hub_requests = [r for r in hub.logged() if r.server == "hub"]
    assert hub_requests and all(r.authorization == f"Bearer {TOKEN}" for r in hub_requests)
    assert TOKEN not in done.stdout + done.stderr


def test_a_hub_that_refuses_connections_is_unavailable(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    done = pull(env_for(tmp_path, endpoint), REPO)

    assert done.returncode == 69
    line = error_line(done)
    assert f"cannot reach the Hub at {endpoint}" in line and "ConnectError" in line


def test_offline_with_nothing_cached_is_unavailable(hub: FakeHub, tmp_path: Path) -> None:
    done = pull(env_for(tmp_path, hub.url, HF_HUB_OFFLINE="1"), REPO)

    assert done.returncode == 69
    assert "HF_HUB_OFFLINE is set" in error_line(done)
    assert hub.logged() == []


def test_offline_with_the_snapshot_cached_verifies_it(hub: FakeHub, tmp_path: Path) -> None:
    assert pull(env_for(tmp_path, hub.url), REPO).returncode == 0
    asked = len(hub.logged())

    done = pull(env_for(tmp_path, hub.url, HF_HUB_OFFLINE="1"), REPO)

    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == snapshot(tmp_path)
    assert len(hub.logged()) == asked


def test_sigint_mid_download_exits_130_leaving_no_snapshot_of_it(
    hub: FakeHub, tmp_path: Path
) -> None:
    hub.stall_file = WEIGHTS
    proc = subprocess.Popen(
        supervise_argv("models", "pull", REPO),
        env=env_for(tmp_path, hub.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert hub.stalled.wait(timeout=60), "the download never reached the weights"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == 130
    assert stdout == ""
    assert stderr.strip().splitlines() == [
        f"macprovider-supervise: SIGINT: pull interrupted; files not yet complete stay out of "
        f"{tmp_path / 'hf-cache'}"
    ]
    assert not (snapshot(tmp_path) / WEIGHTS).exists()
