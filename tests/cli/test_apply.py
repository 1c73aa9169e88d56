"""`autotune --apply`: the line-level rewrite of the owned keys, the backup and the atomic write.

Expected outputs are written out in full: any byte the rewrite must not touch is compared.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from macprovider.actors import service_manager
from macprovider.cli.apply import (
    MAX_BACKUP_COUNTER,
    Applied,
    applied_line,
    apply_to_config,
    config_path,
    owned_values,
    restart_hint,
)
from macprovider.cli.errors import ApplyError
from macprovider.cli.owned_keys import OwnedValue, rewrite_owned_keys
from macprovider.server.config import resolve_serve_config

MODEL = "mlx-community/Qwen2.5-7B-Instruct-4bit"
VALUES: dict[str, OwnedValue] = {
    "model": MODEL,
    "kv_bits": 8,
    "max_context_override": 4096,
    "max_concurrency_override": 2,
}
UNSET = {**VALUES, "kv_bits": None}
TS = 1_700_000_000
BAK = f"config.yaml.bak-{TS}"
OWNED_LINES = (
    f"model: {MODEL}\nkv_bits: 8\nmax_context_override: 4096\nmax_concurrency_override: 2\n"
)


def now() -> float:
    return TS + 0.75  # the backup name takes the whole second


def names(folder: Path) -> set[str]:
    return {entry.name for entry in folder.iterdir()}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return tmp_path / "config.yaml"


@pytest.fixture(params=[0o077, 0o022], ids=["umask077", "umask022"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    mask: int = request.param
    old = os.umask(mask)
    yield mask
    os.umask(old)


# --- the rewrite ----------------------------------------------------------------------------------

FULL_BEFORE = """\
# macprovider config: edited by hand
host: "127.0.0.1"   # quoted on purpose

provider_token: 'tok-secret'   # never shown
kv_bits: 4  # tuned
coordinator:
  endpoint: https://pool.example   # nested
  model: nested-is-not-owned
model: old/model
max_context_override: 1000

max_concurrency_override: 1
port: 18080
"""
FULL_AFTER = f"""\
# macprovider config: edited by hand
host: "127.0.0.1"   # quoted on purpose

provider_token: 'tok-secret'   # never shown
kv_bits: 8  # tuned
coordinator:
  endpoint: https://pool.example   # nested
  model: nested-is-not-owned
model: {MODEL}
max_context_override: 4096

max_concurrency_override: 2
port: 18080
"""

REWRITES: list[tuple[str, str, dict[str, OwnedValue], str]] = [
    ("in place, all else kept", FULL_BEFORE, VALUES, FULL_AFTER),
    (
        "kv_bits unset removes its line and comment",
        "model: a\nkv_bits: 4  # tuned\n# below\nmax_context_override: 1\n"
        "max_concurrency_override: 1\n",
        UNSET,
        f"model: {MODEL}\n# below\nmax_context_override: 4096\nmax_concurrency_override: 2\n",
    ),
    (
        "kv_bits unset and absent stays absent",
        "port: 1\n",
        UNSET,
        f"port: 1\nmodel: {MODEL}\nmax_context_override: 4096\nmax_concurrency_override: 2\n",
    ),
    (
        "removing the last line keeps the missing final newline missing",
        "model: a\nmax_context_override: 1\nmax_concurrency_override: 1\nkv_bits: 8",
        UNSET,
        f"model: {MODEL}\nmax_context_override: 4096\nmax_concurrency_override: 2",
    ),
    (
        "CRLF in place, no final newline",
        "model: a\r\nkv_bits: 4\r\nmax_context_override: 1\r\nmax_concurrency_override: 1",
        VALUES,
        OWNED_LINES.replace("\n", "\r\n").removesuffix("\r\n"),
    ),
    (
        "CRLF append after a last line without newline",
        "host: 127.0.0.1\r\n# note\r\nport: 18080",
        VALUES,
        "host: 127.0.0.1\r\n# note\r\nport: 18080\r\n" + OWNED_LINES.replace("\n", "\r\n"),
    ),
    (
        "comment-only file without newline",
        "# nothing yet",
        VALUES,
        "# nothing yet\n" + OWNED_LINES,
    ),
    ("empty file", "", VALUES, OWNED_LINES),
    (
        "UTF-8 BOM before the first key kept",
        "\ufeffmodel: old\r\nport: 1\r\n",
        VALUES,
        f"\ufeffmodel: {MODEL}\r\nport: 1\r\n"
        + OWNED_LINES.split("\n", 1)[1].replace("\n", "\r\n"),
    ),
    (
        "document header kept",
        "%YAML 1.1\n---\nport: 1\n",
        VALUES,
        "%YAML 1.1\n---\nport: 1\n" + OWNED_LINES,
    ),
    (
        "block scalar replaced whole, a blank line after it kept",
        "model: |  # old\n  first\n  second\n\nport: 1\n",
        VALUES,
        f"model: {MODEL}\n\nport: 1\n" + OWNED_LINES.split("\n", 1)[1],
    ),
    (
        "indented block and next-line value replaced whole",
        "kv_bits:\n  bits: 4\n  group: 64\nmodel:\n  old/model\nmax_context_override:\n- 1\n"
        "- 2\nmax_concurrency_override: 1\n  # still part of nothing\nport: 1\n",
        VALUES,
        f"kv_bits: 8\nmodel: {MODEL}\nmax_context_override: 4096\nmax_concurrency_override: 2\n"
        "  # still part of nothing\nport: 1\n",
    ),
    (
        "multi-line plain scalar at the end, no newline",
        "port: 1\nmodel: old\n  model",
        VALUES,
        f"port: 1\nmodel: {MODEL}\n" + OWNED_LINES.split("\n", 1)[1],
    ),
    (
        "empty value gets a space, its comment stays",
        "kv_bits:   # later\n",
        VALUES,
        f"kv_bits: 8   # later\nmodel: {MODEL}\nmax_context_override: 4096\n"
        "max_concurrency_override: 2\n",
    ),
    (
        "quoted key keeps its spelling",
        "\"model\" : old  # q\n'kv_bits': 4\n",
        VALUES,
        f"\"model\" : {MODEL}  # q\n'kv_bits': 8\nmax_context_override: 4096\n"
        "max_concurrency_override: 2\n",
    ),
    (
        "a value already right is left as written",
        f"model: '{MODEL}'  # mine\nkv_bits: 010\nmax_context_override: 0x1000\n"
        "max_concurrency_override: 2\n",
        VALUES,
        f"model: '{MODEL}'  # mine\nkv_bits: 010\nmax_context_override: 0x1000\n"
        "max_concurrency_override: 2\n",
    ),
    (
        "an equal float is not the int serve needs: rewritten",
        f"model: {MODEL}\nkv_bits: 8.0\nmax_context_override: 4096\nmax_concurrency_override: 2\n",
        VALUES,
        OWNED_LINES,
    ),
    (
        "a quoted number is not the int: rewritten",
        'max_context_override: "4096"\n',
        VALUES,
        f"max_context_override: 4096\nmodel: {MODEL}\nkv_bits: 8\nmax_concurrency_override: 2\n",
    ),
]


@pytest.mark.parametrize(
    ("before", "values", "after"),
    [case[1:] for case in REWRITES],
    ids=[case[0] for case in REWRITES],
)
def test_rewrite_touches_only_the_owned_keys(
    before: str, values: dict[str, OwnedValue], after: str
) -> None:
    assert rewrite_owned_keys(before, values, source="cfg") == after


@pytest.mark.parametrize(
    ("model", "plain"),
    [
        (MODEL, True),
        ("/Users/me/models/qwen-7b", True),
        ("~/models/x", True),
        ("./local_model", True),
        ("C:/models/x", False),
        ("my model", False),
        ("repo#frag", False),
        ("a: b", False),
        (" leading", False),
        ("trailing ", False),
        ("-dash", False),
        ("?q", False),
        ("[list]", False),
        ("{map}", False),
        ("!tag", False),
        ("&anchor", False),
        ("*alias", False),
        ("|", False),
        (">", False),
        ("'single'", False),
        ('"double"', False),
        ("%pct", False),
        ("@at", False),
        ("`tick", False),
        ("true", False),
        ("null", False),
        ("~", False),
        ("1.5", False),
        ("1_000", False),
        (".nan", False),
        ("2024-01-01", False),
        ("2024-13-01", False),
        ("back\\slash", False),
        ("tab\there", False),
        ("new\nline", False),
        ("nel\x85line", False),
        ("ls\u2028sep", False),
        ("\ufeffbom", False),
        ("del\x7f", False),
        ("ünïcödé/模型", False),
        ("emoji 😀", False),
    ],
)
def test_model_round_trips_exactly(model: str, plain: bool) -> None:
    text = rewrite_owned_keys("", {**VALUES, "model": model}, source="cfg")
    assert yaml.safe_load(text)["model"] == model
    assert text.startswith(f"model: {model}\n") is plain
    text.encode()  # a lone surrogate or other unencodable character would fail here


# --- refusals -------------------------------------------------------------------------------------

REFUSED = [
    ("invalid YAML", "port: [1, 2\n", "not valid YAML"),
    ("top level a list", "- model: x\n", "not a mapping"),
    ("top level a scalar", "just text\n", "not a mapping"),
    ("flow mapping", "{model: x, port: 1}\n", "flow style"),
    ("anchor", "model: &m old\nother: *m\n", "anchor"),
    ("anchor inside the value", "kv_bits:\n  a: &a 4\nx: *a\n", "anchor"),
    ("alias value", "bits: &b 4\nkv_bits: *b\n", "alias"),
    ("alias key", "name: &k model\n*k : old\n", "alias"),
    ("tag", "model: !!str old\n", "tag"),
    ("tag on the key", "!!str model: old\n", "tag"),
    ("duplicate", "model: a\nport: 1\nmodel: b\n", "twice"),
    ("explicit key", "? model\n: old\n", "cannot locate"),
    # The rewrite could not be verified: a merge key would still set kv_bits...
    ("merged kv_bits", "base: &b {kv_bits: 4}\n<<: *b\n", "kv_bits would read 4"),
    # ...and keys appended after an explicit document end would start a second document.
    ("after document end", "port: 1\n...\n", "rewritten config would not be valid YAML"),
]


@pytest.mark.parametrize(
    ("text", "reason"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
def test_refused_config_is_left_byte_identical(config: Path, text: str, reason: str) -> None:
    config.write_bytes(text.encode())
    with pytest.raises(ApplyError) as refused:
        apply_to_config(config, UNSET, now=now)
    message = str(refused.value)
    assert str(config) in message
    assert reason in message
    assert "\n" not in message
    assert config.read_bytes() == text.encode()
    assert names(config.parent) == {"config.yaml"}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("kv_bits", 7),
        ("kv_bits", "unset"),
        ("max_context_override", 0),
        ("max_concurrency_override", True),
        ("max_concurrency_override", None),
        ("model", ""),
        ("model", None),
    ],
)
def test_values_serve_would_refuse_are_never_written(config: Path, key: str, value: Any) -> None:
    config.write_bytes(b"port: 1\n")
    with pytest.raises(ApplyError, match=f": {key} "):
        apply_to_config(config, {**VALUES, key: value}, now=now)
    assert config.read_bytes() == b"port: 1\n"


def test_values_must_name_exactly_the_owned_keys() -> None:
    with pytest.raises(ApplyError, match="exactly"):
        rewrite_owned_keys("", {**VALUES, "port": 1}, source="cfg")


def test_non_utf8_config_is_refused(config: Path) -> None:
    config.write_bytes(b"port: 1\n# caf\xe9\n")
    with pytest.raises(ApplyError, match="UTF-8"):
        apply_to_config(config, VALUES, now=now)
    assert config.read_bytes() == b"port: 1\n# caf\xe9\n"


# --- the file: creation, backups, atomicity, modes -----------------------------------------------


def test_missing_config_is_created_with_only_the_owned_keys(tmp_path: Path, umask: int) -> None:
    config = tmp_path / "a" / "b" / "config.yaml"
    applied = apply_to_config(config, VALUES, now=now)
    assert applied == Applied(config, None, changed=True)
    assert config.read_text() == OWNED_LINES
    assert mode(config) == 0o600
    assert mode(config.parent) == 0o700
    assert names(config.parent) == {"config.yaml"}
    assert applied_line(applied) == f"applied: created {config}"


@pytest.mark.parametrize("original_mode", [0o600, 0o644])
def test_config_and_backup_keep_the_original_mode(
    config: Path, original_mode: int, umask: int
) -> None:
    config.write_bytes(FULL_BEFORE.encode())
    config.chmod(original_mode)
    applied = apply_to_config(config, VALUES, now=now)
    assert applied.backup_path == config.with_name(f"{BAK}-0")
    assert mode(config) == original_mode
    assert mode(applied.backup_path) == original_mode
    assert applied.backup_path.read_bytes() == FULL_BEFORE.encode()
    assert config.read_bytes() == FULL_AFTER.encode()


def test_two_applies_in_one_second_get_their_own_backups(config: Path) -> None:
    config.write_bytes(FULL_BEFORE.encode())
    first = apply_to_config(config, VALUES, now=now)
    between = config.read_bytes()
    second = apply_to_config(config, UNSET, now=now)
    assert first.backup_path == config.with_name(f"{BAK}-0")
    assert second.backup_path == config.with_name(f"{BAK}-1")
    assert first.backup_path.read_bytes() == FULL_BEFORE.encode()
    assert second.backup_path.read_bytes() == between
    assert applied_line(second) == f"applied: {config} (backup: {second.backup_path})"


def test_an_existing_backup_is_skipped_not_overwritten(config: Path) -> None:
    config.write_bytes(b"port: 1\n")
    taken = config.with_name(f"{BAK}-0")
    taken.write_bytes(b"someone else's\n")
    applied = apply_to_config(config, VALUES, now=now)
    assert applied.backup_path == config.with_name(f"{BAK}-1")
    assert taken.read_bytes() == b"someone else's\n"
    assert applied.backup_path.read_bytes() == b"port: 1\n"


@pytest.mark.slow
def test_gives_up_past_the_last_backup_counter(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config.write_bytes(b"port: 1\n")
    real_open, real_link = os.open, os.link
    tried: list[str] = []

    def refuse_backup_names(path: Any) -> None:
        if ".bak-" in str(path):
            tried.append(str(path))
            raise FileExistsError(path)

    def every_backup_taken(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        refuse_backup_names(path)
        return real_open(path, flags, *args, **kwargs)

    def every_backup_name_taken(src: Any, dst: Any, **kwargs: Any) -> None:
        refuse_backup_names(dst)  # where the system has unnamed files, a backup is linked
        real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "open", every_backup_taken)
    monkeypatch.setattr(os, "link", every_backup_name_taken)
    with pytest.raises(ApplyError, match=f"-{MAX_BACKUP_COUNTER} all exist"):
        apply_to_config(config, VALUES, now=now)
    assert len(tried) == MAX_BACKUP_COUNTER + 1 == 65536
    assert tried[-1].endswith(f"{BAK}-65535")
    assert config.read_bytes() == b"port: 1\n"
    assert names(config.parent) == {"config.yaml"}


@pytest.mark.parametrize("crash", [OSError(5, "Input/output error"), KeyboardInterrupt()])
def test_crash_before_the_rename_leaves_the_original_and_no_leftovers(
    config: Path, monkeypatch: pytest.MonkeyPatch, crash: BaseException
) -> None:
    config.write_bytes(FULL_BEFORE.encode())

    def crashing_replace(*_args: Any) -> None:
        raise crash

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(ApplyError if isinstance(crash, OSError) else KeyboardInterrupt):
        apply_to_config(config, VALUES, now=now)
    assert config.read_bytes() == FULL_BEFORE.encode()
    assert names(config.parent) == {"config.yaml"}  # no temp file, no backup of a non-change


def test_second_identical_apply_changes_nothing(config: Path) -> None:
    config.write_bytes(FULL_BEFORE.encode())
    first = apply_to_config(config, VALUES, now=now)
    after_first = config.read_bytes()
    second = apply_to_config(config, VALUES, now=now)
    assert first.changed
    assert second == Applied(config, None, changed=False)
    assert config.read_bytes() == after_first
    assert names(config.parent) == {"config.yaml", f"{BAK}-0"}
    assert "nothing written" in applied_line(second)


def test_symlinked_config_is_written_through(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "macprovider.yaml"
    real.parent.mkdir()
    real.write_bytes(b"port: 1\n")
    link = tmp_path / "config.yaml"
    link.symlink_to(real)
    applied = apply_to_config(link, VALUES, now=now)
    assert link.is_symlink()
    assert real.read_text() == "port: 1\n" + OWNED_LINES
    assert applied.backup_path == real.with_name(f"macprovider.yaml.bak-{TS}-0")


# --- what serve reads, and what the operator reads ------------------------------------------------


@pytest.mark.parametrize("values", [VALUES, UNSET], ids=["kv8", "unset"])
def test_serve_resolver_reads_the_recommendation(
    config: Path, values: dict[str, OwnedValue]
) -> None:
    config.write_bytes(FULL_BEFORE.encode())
    apply_to_config(config, values, now=now)
    env = {"MACPROVIDER_CONFIG": str(config)}
    resolved = resolve_serve_config({}, env, ram_bytes=16 << 30)
    assert (resolved.model, resolved.kv_bits) == (MODEL, values["kv_bits"])
    assert (resolved.max_context, resolved.max_batch) == (4096, 2)
    assert (resolved.port, resolved.provider_token) == (18080, "tok-secret")
    kv_source = f"{config} (kv_bits)" if values["kv_bits"] else "default"
    assert resolved.sources["kv_bits"] == kv_source


def test_owned_values_from_recommendation_knobs() -> None:
    knobs = {"kv_bits": None, "max_concurrency_override": 2, "max_context_override": 4096}
    assert owned_values(MODEL, knobs) == UNSET


def test_config_path_is_the_one_serve_reads(tmp_path: Path) -> None:
    home = {"HOME": str(tmp_path)}
    assert config_path(None, home) == tmp_path / ".config/macprovider/config.yaml"
    xdg = {**home, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert config_path(None, xdg) == tmp_path / "xdg/macprovider/config.yaml"
    named = {**xdg, "MACPROVIDER_CONFIG": str(tmp_path / "env.yaml")}
    assert config_path(None, named) == tmp_path / "env.yaml"
    assert config_path(str(tmp_path / "flag.yaml"), named) == tmp_path / "flag.yaml"


@pytest.mark.parametrize(
    ("platform", "command"),
    [
        ("darwin", "launchctl kickstart -k gui/$(id -u)/live.streamvc.macprovider"),
        ("linux", "systemctl --user restart macprovider.service"),
        ("freebsd14", None),
    ],
)
def test_restart_hint_names_the_service_command(platform: str, command: str | None) -> None:
    hint = restart_hint(platform)
    assert "stop it and start it again" in hint
    if command is None:
        assert "launchctl" not in hint and "systemctl" not in hint
    else:
        assert command in hint
    assert "\n" not in hint


def test_restart_hint_constants() -> None:
    assert (service_manager.LAUNCHD_LABEL, service_manager.SYSTEMD_UNIT) == (
        "live.streamvc.macprovider",
        "macprovider.service",
    )
