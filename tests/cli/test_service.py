"""`service install|uninstall|status`: the launchd plist and the systemd unit, in a temp HOME.

Most cases call the click group in-process (CliRunner); the last ones run the real command line
(`macprovider-supervise service …`) as a subprocess. launchctl and systemctl are fakes: small
scripts first on PATH that record their arguments and answer as each test says.
"""

from __future__ import annotations

import configparser
import os
import plistlib
import shlex
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from macprovider.actors import service_calls
from macprovider.cli.service import (
    TEMPLATES_DIR,
    ServiceError,
    service,
    service_file,
    supervise_command,
)
from tests.conftest import ROOT, clean_env, supervise_argv

LABEL = "live.streamvc.macprovider"
UNIT = "macprovider.service"
TEMPLATES = ("launchd.plist.template", "systemd.service.template")


@dataclass
class Home:
    """A temp HOME, its XDG_CONFIG_HOME, and a PATH holding only the fake tools."""

    root: Path
    bin: Path

    @property
    def env(self) -> dict[str, str]:
        return {
            "HOME": str(self.root),
            "XDG_CONFIG_HOME": str(self.root / "xdg-config"),
            "PATH": str(self.bin),
        }

    @property
    def calls(self) -> list[str]:
        log = self.bin / "calls.log"
        return log.read_text().splitlines() if log.exists() else []

    def plist(self, label: str = LABEL) -> Path:
        return self.root / "Library" / "LaunchAgents" / f"{label}.plist"

    def unit(self, unit: str = UNIT) -> Path:
        return self.root / "xdg-config" / "systemd" / "user" / unit

    def path(self, platform: str) -> Path:
        return self.plist() if platform == "macos" else self.unit()

    def fake(self, tool: str, *, stdout: str = "", code: int = 0, body: str = "") -> None:
        """`tool` on PATH: logs `tool args…`, prints `stdout`, exits `code` (or runs `body`)."""
        log = shlex.quote(str(self.bin / "calls.log"))
        answer = body or f"printf '%s' {shlex.quote(stdout)}\nexit {code}"
        script = self.bin / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n{answer}\n')
        script.chmod(0o755)

    def invoke(self, *args: str) -> Result:
        return CliRunner().invoke(service, list(args), env=self.env)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The real command line, as the lead wires it into `macprovider-supervise`."""
        env = clean_env(**self.env)
        argv = supervise_argv("service", *args)
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    (tmp_path / "home").mkdir()
    (tmp_path / "bin").mkdir()
    return Home(tmp_path / "home", tmp_path / "bin")


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if not p.is_dir())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def read_unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


# --- the templates ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TEMPLATES)
def test_packaged_templates_are_byte_identical_to_the_ones_in_ops(name: str) -> None:
    assert (TEMPLATES_DIR / name).read_bytes() == (ROOT / "ops" / name).read_bytes()


# --- install and uninstall ----------------------------------------------------------------------


@pytest.mark.parametrize("platform", ["macos", "linux"])
def test_install_then_uninstall_round_trip(home: Home, platform: str) -> None:
    expected = ok(home.invoke("install", "--platform", platform, "--dry-run")).stdout
    installed = ok(home.invoke("install", "--platform", platform))
    path = home.path(platform)
    assert path.read_text() == expected
    assert mode(path) == 0o644
    assert str(path) in installed.stderr
    assert [p.name for p in files_under(path.parent)] == [path.name]  # no temp file left
    status = ok(home.invoke("status", "--platform", platform)).stdout
    assert f"installed at {path}" in status

    removed = ok(home.invoke("uninstall", "--platform", platform))
    assert not path.exists()
    assert f"removed the {'launchd agent' if platform == 'macos' else 'systemd user unit'}" in (
        removed.stderr
    )
    assert "not installed" in ok(home.invoke("status", "--platform", platform)).stdout
    again = ok(home.invoke("uninstall", "--platform", platform))
    assert "not installed (nothing to remove)" in again.stderr


def test_macos_install_prints_bootstrap_and_creates_the_log_folder(home: Home) -> None:
    result = ok(home.invoke("install", "--platform", "macos"))
    assert f"launchctl bootstrap gui/$(id -u) {home.plist()}" in result.stderr
    assert (home.root / "Library" / "Logs" / "macprovider").is_dir()  # launchd will not make it
    removed = ok(home.invoke("uninstall", "--platform", "macos"))
    assert "daemon-reload" not in removed.stderr


def test_linux_install_prints_enable_now_and_uninstall_daemon_reload(home: Home) -> None:
    result = ok(home.invoke("install", "--platform", "linux"))
    commands = "systemctl --user daemon-reload && systemctl --user enable --now macprovider.service"
    assert commands in result.stderr
    assert (
        "systemctl --user daemon-reload"
        in ok(home.invoke("uninstall", "--platform", "linux")).stderr
    )


@pytest.mark.parametrize("platform", ["macos", "linux"])
def test_dry_run_prints_the_file_and_where_and_writes_nothing(home: Home, platform: str) -> None:
    result = ok(home.invoke("install", "--platform", platform, "--dry-run"))
    assert result.stdout.startswith(("<?xml", "# Written by"))
    assert f"would write {home.path(platform)}" in result.stderr
    assert list(home.root.iterdir()) == []  # not even a folder
    home.path(platform).parent.mkdir(parents=True)
    home.path(platform).write_text(result.stdout)
    ok(home.invoke("uninstall", "--platform", platform, "--dry-run"))
    assert home.path(platform).read_text() == result.stdout


@pytest.mark.parametrize("platform", ["macos", "linux"])
def test_a_different_file_is_refused_without_force(home: Home, platform: str) -> None:
    path = home.path(platform)
    path.parent.mkdir(parents=True)
    path.write_text("mine\n")
    path.chmod(0o600)
    refused = home.invoke("install", "--platform", platform)
    assert isinstance(refused.exception, ServiceError)
    assert "--force" in str(refused.exception)
    assert "\n" not in str(refused.exception)
    assert path.read_text() == "mine\n"

    assert (
        "would replace"
        in ok(home.invoke("install", "--platform", platform, "--dry-run", "--force")).stderr
    )
    assert path.read_text() == "mine\n"
    replaced = ok(home.invoke("install", "--platform", platform, "--force"))
    assert path.read_text() != "mine\n"
    assert mode(path) == 0o644
    assert "restart it on the new file" in replaced.stderr


@pytest.mark.parametrize("platform", ["macos", "linux"])
def test_installing_the_same_content_again_writes_nothing(home: Home, platform: str) -> None:
    ok(home.invoke("install", "--platform", platform))
    before = home.path(platform).stat()
    again = ok(home.invoke("install", "--platform", platform))
    assert "already installed as is" in again.stderr
    after = home.path(platform).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_label_and_unit_name_the_files(home: Home) -> None:
    ok(home.invoke("install", "--platform", "macos", "--label", "com.example.provider"))
    plist = plistlib.loads(home.plist("com.example.provider").read_bytes())
    assert plist["Label"] == "com.example.provider"
    ok(home.invoke("install", "--platform", "linux", "--unit", "other.service"))
    assert home.unit("other.service").exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--label", "a/b"),
        ("--label", ".hidden"),
        ("--unit", "macprovider"),
        ("--unit", "x/y.service"),
    ],
)
def test_bad_label_or_unit_is_a_usage_error(home: Home, option: str, value: str) -> None:
    result = home.invoke("install", option, value, "--dry-run")
    assert result.exit_code == 2  # click's usage error; 64 through macprovider-supervise
    assert option in result.stderr


def test_an_unknown_platform_asks_for_platform(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "freebsd14")
    result = home.invoke("install", "--dry-run")
    assert result.exit_code == 2
    assert "--platform" in result.stderr


def test_the_default_platform_is_this_machines(home: Home) -> None:
    ok(home.invoke("install"))
    expected = home.plist() if sys.platform == "darwin" else home.unit()
    assert files_under(home.root) == [expected]


def test_the_unit_folder_defaults_to_home_config(home: Home) -> None:
    env: dict[str, str | None] = {**home.env, "XDG_CONFIG_HOME": None}  # None: unset
    ok(CliRunner().invoke(service, ["install", "--platform", "linux"], env=env))
    assert (home.root / ".config" / "systemd" / "user" / UNIT).exists()


# --- what is written ----------------------------------------------------------------------------


def test_the_plist_runs_run_restarts_on_crash_only_and_logs_under_library_logs(home: Home) -> None:
    ok(home.invoke("install", "--platform", "macos"))
    plist = plistlib.loads(home.plist().read_bytes())
    program = supervise_command()
    assert plist["Label"] == LABEL
    assert plist["ProgramArguments"] == [*program, "run"]
    assert Path(program[0]).is_absolute() and os.access(program[0], os.X_OK)
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    logs = home.root / "Library" / "Logs" / "macprovider"
    assert Path(plist["StandardOutPath"]).parent == logs
    assert Path(plist["StandardErrorPath"]).parent == logs
    assert plist["ProcessType"] == "Interactive"  # launchd throttles an unspecified one
    search_path = plist["EnvironmentVariables"]["PATH"].split(":")
    assert search_path[0] == str(Path(program[0]).parent)
    assert "/usr/bin" in search_path


def test_the_unit_runs_run_restarts_on_failure_and_is_wanted_by_default(home: Home) -> None:
    ok(home.invoke("install", "--platform", "linux"))
    unit = read_unit(home.unit())
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    assert unit["Unit"]["Description"]
    assert shlex.split(unit["Service"]["ExecStart"]) == [*supervise_command(), "run"]
    assert unit["Service"]["Restart"] == "on-failure"
    assert unit["Service"]["RestartPreventExitStatus"].split() == ["64", "66", "75"]
    assert unit["Service"]["KillMode"] == "mixed"
    assert unit["Install"]["WantedBy"] == "default.target"


def test_paths_with_spaces_and_specials_survive_both_formats() -> None:
    program = ["/opt/my env/50%$off/bin/python", "-m", "a$b c"]  # `$` expands in arguments only
    env = {"HOME": "/Users/a&b <c>"}
    linux = service_file("linux", LABEL, UNIT, env, program)
    exec_start = next(line for line in linux.content.splitlines() if line.startswith("ExecStart="))
    assert exec_start == 'ExecStart="/opt/my env/50%%$off/bin/python" -m "a$$b c" run'
    macos = service_file("macos", LABEL, UNIT, env, program)
    plist = plistlib.loads(macos.content.encode())
    assert plist["ProgramArguments"] == [*program, "run"]
    assert plist["StandardOutPath"] == "/Users/a&b <c>/Library/Logs/macprovider/run.log"


def test_a_control_character_in_a_path_is_refused() -> None:
    with pytest.raises(ServiceError, match="control character"):
        service_file("linux", LABEL, UNIT, {"HOME": "/h"}, ["/bad\npath"])


def test_the_service_runs_the_script_beside_the_interpreter_else_python_m(tmp_path: Path) -> None:
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.touch()
    assert supervise_command(str(python)) == [str(python), "-m", "macprovider.cli"]
    script = tmp_path / "bin" / "macprovider-supervise"
    script.touch(mode=0o755)
    assert supervise_command(str(python)) == [str(script)]


# --- status and the uninstall guard ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "tool", "stdout", "code", "line"),
    [
        ("macos", "launchctl", "{ state = running }", 0, "launchd: loaded"),
        ("macos", "launchctl", "Could not find service", 113, "launchd: not loaded"),
        ("linux", "systemctl", "active\n", 0, "systemd: active"),
        ("linux", "systemctl", "inactive\n", 3, "systemd: inactive"),
        ("linux", "systemctl", "failed\n", 3, "systemd: failed"),
    ],
)
def test_status_asks_the_service_manager(
    home: Home, platform: str, tool: str, stdout: str, code: int, line: str
) -> None:
    home.fake(tool, stdout=stdout, code=code)
    result = ok(home.invoke("status", "--platform", platform))
    assert result.stdout.splitlines()[-1] == line
    asked = (
        f"launchctl print gui/{os.getuid()}/{LABEL}"
        if tool == "launchctl"
        else (f"systemctl --user is-active {UNIT}")
    )
    assert home.calls == [asked]


def test_status_without_the_tool_or_with_no_user_manager_says_unknown(home: Home) -> None:
    assert (
        "launchd: unknown (launchctl is not on PATH)"
        in ok(home.invoke("status", "--platform", "macos")).stdout
    )
    home.fake("systemctl", body="echo 'Failed to connect to bus' >&2\nexit 1")
    status = ok(home.invoke("status", "--platform", "linux")).stdout
    assert "systemd: unknown (systemctl: Failed to connect to bus)" in status


def test_status_gives_up_on_a_hung_tool(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_calls, "COMMAND_TIMEOUT_S", 0.3)
    sleep = shutil.which("sleep")
    assert sleep is not None
    home.fake("systemctl", body=f"exec {sleep} 30")  # exec: the timeout's kill reaches the sleep
    status = ok(home.invoke("status", "--platform", "linux")).stdout
    assert "systemd: unknown (systemctl gave no answer within 0.3 s)" in status


def test_status_notices_a_file_that_install_would_write_differently(home: Home) -> None:
    home.unit().parent.mkdir(parents=True)
    home.unit().write_text("[Service]\nExecStart=/old/macprovider-supervise run\n")
    assert "install --force updates it" in ok(home.invoke("status", "--platform", "linux")).stdout


@pytest.mark.parametrize(
    ("platform", "tool", "stdout", "stop"),
    [
        ("macos", "launchctl", "", f"launchctl bootout gui/$(id -u)/{LABEL}"),
        ("linux", "systemctl", "active\n", f"systemctl --user disable --now {UNIT}"),
    ],
)
def test_uninstall_refuses_while_the_service_runs_unless_forced(
    home: Home, platform: str, tool: str, stdout: str, stop: str
) -> None:
    ok(home.invoke("install", "--platform", platform))
    home.fake(tool, stdout=stdout, code=0)
    refused = home.invoke("uninstall", "--platform", platform)
    assert isinstance(refused.exception, ServiceError)
    assert stop in str(refused.exception)
    assert home.path(platform).exists()
    forced = ok(home.invoke("uninstall", "--platform", platform, "--force"))
    assert not home.path(platform).exists()
    assert stop in forced.stderr


@pytest.mark.parametrize(
    ("state", "refused"),
    [("active", True), ("reloading", True), ("activating", True), ("deactivating", False)],
)
def test_uninstall_guards_the_states_a_drain_counts_as_live(
    home: Home, state: str, refused: bool
) -> None:
    ok(home.invoke("install", "--platform", "linux"))
    home.fake("systemctl", stdout=f"{state}\n", code=0 if state == "active" else 3)
    result = home.invoke("uninstall", "--platform", "linux")
    if refused:
        assert f"is {state}; stop it first" in str(result.exception)
        assert home.unit().exists()
    else:
        ok(result)
        assert not home.unit().exists()


def test_uninstall_refuses_an_enabled_unit_even_when_inactive(home: Home) -> None:
    ok(home.invoke("install", "--platform", "linux"))
    home.fake("systemctl", stdout="inactive\n", code=3)
    wants = home.unit().parent / "default.target.wants"
    wants.mkdir()
    (wants / UNIT).symlink_to(home.unit())
    refused = home.invoke("uninstall", "--platform", "linux")
    assert "is enabled; stop it first" in str(refused.exception)
    (wants / UNIT).unlink()
    ok(home.invoke("uninstall", "--platform", "linux"))
    assert not home.unit().exists()


# --- the real validators, where this machine has them -------------------------------------------


def test_the_plist_passes_plutil_lint(home: Home) -> None:
    plutil = shutil.which("plutil")
    if plutil is None:
        pytest.skip("plutil is not on PATH (macOS only)")
    ok(home.invoke("install", "--platform", "macos"))
    done = subprocess.run([plutil, "-lint", str(home.plist())], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("odd_path", [False, True])
def test_the_unit_passes_systemd_analyze_verify(home: Home, tmp_path: Path, odd_path: bool) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not on PATH (Linux with systemd only)")
    if odd_path:  # systemd must find the program through the quoting and escaping
        script = tmp_path / "my env" / "50%$x" / "macprovider-supervise"
        script.parent.mkdir(parents=True)
        script.write_text("#!/bin/sh\n")
        script.chmod(0o755)
        unit = service_file("linux", LABEL, UNIT, home.env, [str(script)])
        home.unit().parent.mkdir(parents=True)
        home.unit().write_text(unit.content)
    else:
        ok(home.invoke("install", "--platform", "linux"))
    runtime = tmp_path / "runtime"  # --user mode needs one, and CI containers often have none
    runtime.mkdir(mode=0o700)
    env = {**os.environ, **home.env, "PATH": os.environ["PATH"], "XDG_RUNTIME_DIR": str(runtime)}
    argv = [analyze, "--user", "verify", str(home.unit())]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    said = done.stdout + done.stderr
    if "Failed to initialize manager" in said:
        pytest.skip(f"systemd-analyze --user cannot run here: {said.strip()}")
    assert done.returncode == 0, said
    assert UNIT not in said, said  # systemd only warns about unknown keys and bad values


# --- through macprovider-supervise --------------------------------------------------------------


@pytest.mark.parametrize(("platform", "tool"), [("macos", "launchctl"), ("linux", "systemctl")])
def test_command_line_round_trip(home: Home, platform: str, tool: str) -> None:
    home.fake(tool, stdout="inactive\n", code=3)
    installed = home.cli("install", "--platform", platform)
    assert installed.returncode == 0, installed.stderr
    assert home.path(platform).exists()
    status = home.cli("status", "--platform", platform)
    assert status.returncode == 0, status.stderr
    assert f"installed at {home.path(platform)}" in status.stdout
    removed = home.cli("uninstall", "--platform", platform)
    assert removed.returncode == 0, removed.stderr
    assert not home.path(platform).exists()
    assert len(home.calls) == 2  # status asked once, the uninstall guard once


def test_command_line_exit_codes(home: Home) -> None:
    home.unit().parent.mkdir(parents=True)
    home.unit().write_text("mine\n")
    refused = home.cli("install", "--platform", "linux")
    assert refused.returncode == 73, refused.stderr
    assert refused.stderr.count("\n") == 1 and "--force" in refused.stderr
    bad = home.cli("install", "--platform", "linux", "--unit", "nope")
    assert bad.returncode == 64, bad.stderr
    helped = home.cli("--help")
    assert helped.returncode == 0 and all(c in helped.stdout for c in ("install", "status"))
