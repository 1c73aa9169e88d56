"""Fake `launchctl` and `systemctl` for the DrainActor's tests, and programs named like
the real provider.

`FakeServices(root)` writes both tools into `root/bin` (put it first on PATH with
`env()`). They keep a little state in `root/services.json` — launchd jobs and systemd
user units — so a drain and a restore act on it as the real managers would: `bootout` /
`stop` SIGTERM the job's PID (if any) and unload it, `bootstrap` / `start` load it again.
Every call is appended to `root/calls.jsonl` as `[tool, *args]`; `calls()` reads them.
`fail(tool, verb, ...)` makes one verb fail with a given exit code and stderr.

`write_program(dir, name, body)` writes an executable Python script named `name`: it runs
as `python dir/name args…`, exactly the shape of a console script such as the real
`macprovider-supervise`. `STANDIN_BODY` serves like `provider_standin.py` (a leading
`serve` is dropped); `PARENT_BODY` starts a child, prints its PID and stops it on SIGTERM,
like `run` does. `Programs` starts such stand-ins for a test and ends them all after it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from macprovider.actors.provider import port_is_free
from tests.conftest import clean_env, free_port, wait_until

STANDIN = Path(__file__).with_name("provider_standin.py")
UP_TIMEOUT = 10.0  # for a stand-in to listen, or an ended one to be reaped

# Both tools are this one script; it dispatches on the name it was called by.
_TOOL_SOURCE = r"""
import json, os, signal, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATE = os.path.join(ROOT, "services.json")
TOOL = os.path.basename(sys.argv[0])
ARGS = sys.argv[1:]


def load():
    with open(STATE) as f:
        return json.load(f)


def save(state):
    with open(STATE + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(STATE + ".tmp", STATE)


def term(pid):
    if pid:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass


def finish(code, out="", err=""):
    if out:
        print(out)
    if err:
        print(err, file=sys.stderr)
    sys.exit(code)


def launchctl(state, verb, rest):
    jobs = state["launchd"]
    if verb == "list":
        lines = ["PID\tStatus\tLabel"]
        for label, job in jobs.items():
            if job["loaded"]:
                lines.append(f"{job['pid'] or '-'}\t{job['status']}\t{label}")
        finish(0, "\n".join(lines))
    if verb in ("print", "bootout"):
        label = rest[0].split("/", 2)[-1]
        job = jobs.get(label)
        if job is None or not job["loaded"]:
            finish(113, err=f'Could not find service "{label}" in domain for port')
        if verb == "print":
            path = f"\tpath = {job['plist']}\n" if job["print_path"] else ""
            finish(0, f"{rest[0]} = {{\n{path}\tstate = running\n}}")
        term(job["pid"])
        job.update(loaded=False, pid=None)
    elif verb == "bootstrap":
        job = next((j for j in jobs.values() if j["plist"] == rest[1]), None)
        if job is None or job["loaded"]:
            finish(5, err="Bootstrap failed: 5: Input/output error")
        job["loaded"] = True
    else:
        finish(64, err=f"fake launchctl: unknown verb {verb}")
    save(state)
    finish(0)


def systemctl(state, verb, rest):
    units = state["systemd"]
    unit = rest[-1] if rest else ""
    found = units.get(unit)
    if verb == "is-active":
        current = found["state"] if found else "inactive"
        finish(0 if current == "active" else 3, current)
    if verb == "show":
        finish(0, str(found["main_pid"] if found else 0))
    if verb not in ("stop", "start"):
        finish(64, err=f"fake systemctl: unknown verb {verb}")
    if found is None:
        finish(5, err=f"Failed to {verb} {unit}: Unit {unit} not loaded.")
    if verb == "stop":
        term(found["main_pid"])
        found.update(state="inactive", main_pid=0)
    else:
        found["state"] = "active"
    save(state)
    finish(0)


def main():
    with open(os.path.join(ROOT, "calls.jsonl"), "a") as log:
        log.write(json.dumps([TOOL, *ARGS]) + "\n")
    state = load()
    if TOOL == "systemctl":
        if ARGS[:1] != ["--user"]:
            finish(1, err="fake systemctl: only --user is faked")
        words = [arg for arg in ARGS[1:] if not arg.startswith("--")]
    else:
        words = ARGS
    verb, rest = (words[0] if words else ""), words[1:]
    failure = state["fail"].get(f"{TOOL} {verb}")
    if failure is not None:
        finish(failure["code"], err=failure["stderr"])
    (systemctl if TOOL == "systemctl" else launchctl)(state, verb, rest)


main()
"""

STANDIN_BODY = f"""
import runpy, sys

args = sys.argv[1:]
if args[:1] == ["serve"]:
    args = args[1:]
sys.argv = [{str(STANDIN)!r}, *args]
runpy.run_path({str(STANDIN)!r}, run_name="__main__")
"""

PARENT_BODY = """
import json, os, signal, subprocess, sys

default = [sys.executable, "-c", "import time; time.sleep(120)"]
child = subprocess.Popen(json.loads(os.environ.get("PARENT_CHILD_ARGV") or "null") or default)
print(child.pid, flush=True)


def stop(signum, frame):
    child.terminate()
    child.wait(10)
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
child.wait()
"""


def write_program(directory: Path, name: str, body: str, *, flags: str = "") -> Path:
    """An executable Python script `directory/name` (run as `python [flags] path args`)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    shebang = f"#!{sys.executable}" + (f" {flags}" if flags else "")
    path.write_text(f"{shebang}\n{body}")
    path.chmod(0o755)
    return path


class FakeServices:
    """The fake service managers under `root`; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.bin_dir = root / "bin"
        self.state_path = root / "services.json"
        self.log_path = root / "calls.jsonl"
        for tool in ("launchctl", "systemctl"):
            write_program(self.bin_dir, tool, _TOOL_SOURCE, flags="-S")  # -S: starts faster
        self._save({"launchd": {}, "systemd": {}, "fail": {}})

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """`base` with the fakes first on PATH."""
        env = dict(base)
        env["PATH"] = os.pathsep.join([str(self.bin_dir), base.get("PATH", os.defpath)])
        return env

    def add_launchd_job(
        self,
        label: str,
        plist: Path,
        *,
        pid: int | None = None,
        status: int = 0,
        print_path: bool = True,
    ) -> None:
        """A loaded job; `pid=None` lists as `-` (loaded, not running)."""
        state = self._load()
        job = {"plist": str(plist), "pid": pid, "status": status, "loaded": True}
        state["launchd"][label] = {**job, "print_path": print_path}
        self._save(state)

    def add_systemd_unit(self, unit: str, *, state: str = "active", main_pid: int = 0) -> None:
        current = self._load()
        current["systemd"][unit] = {"state": state, "main_pid": main_pid}
        self._save(current)

    def fail(self, tool: str, verb: str, *, code: int = 1, stderr: str = "failed") -> None:
        """Every later `tool verb …` call exits `code` with `stderr`, changing nothing."""
        state = self._load()
        state["fail"][f"{tool} {verb}"] = {"code": code, "stderr": stderr}
        self._save(state)

    def launchd_job(self, label: str) -> dict[str, Any]:
        job: dict[str, Any] = self._load()["launchd"][label]
        return job

    def systemd_unit(self, unit: str) -> dict[str, Any]:
        unit_state: dict[str, Any] = self._load()["systemd"][unit]
        return unit_state

    def calls(self) -> list[tuple[str, ...]]:
        """Every call so far, in order, as `(tool, *args)`."""
        if not self.log_path.exists():
            return []
        lines = self.log_path.read_text().splitlines()
        return [tuple(json.loads(line)) for line in lines]

    def _load(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self.state_path.read_text())
        return state

    def _save(self, state: dict[str, Any]) -> None:
        self.state_path.write_text(json.dumps(state))


# The stand-in knows no API key: it is dropped before the stand-in parses its arguments.
KEY_DROPPING = """
import sys

args = sys.argv[1:]
if "--api-key" in args:
    del args[args.index("--api-key") : args.index("--api-key") + 2]
sys.argv[1:] = [arg for arg in args if not arg.startswith("--api-key=")]
"""


class Programs:
    """Processes named like the provider, started by a test and all ended after it."""

    def __init__(self, root: Path) -> None:
        self.bin_dir = root / "programs"
        self.cwd = root / "cwd"
        self.cwd.mkdir()
        self.started: list[subprocess.Popen[bytes]] = []

    def serve(
        self, name: str = "macprovider-supervise", mode: str = "ok", *extra: str
    ) -> tuple[int, int]:
        """A stand-in `<name> serve --no-join --port P --model m [extra]` listening on P;
        (pid, P). An `--api-key` among `extra` stays in the process's command line only."""
        port = free_port()
        program = write_program(self.bin_dir, name, KEY_DROPPING + STANDIN_BODY)
        argv = [str(program), "serve", "--no-join", "--port", str(port), "--model", "m", *extra]
        proc = self._start(argv, clean_env(STANDIN_MODE=mode))
        wait_until(lambda: self._listening(proc, port), UP_TIMEOUT, f"the stand-in on {port}")
        return proc.pid, port

    def parent(self, subcommand: str, child: list[str] | None = None) -> tuple[int, int]:
        """`macprovider-supervise <subcommand>` with one child process; (pid, child pid)."""
        program = write_program(self.bin_dir / "parent", "macprovider-supervise", PARENT_BODY)
        env = clean_env(PARENT_CHILD_ARGV=json.dumps(child), STANDIN_MODE="ok")
        proc = self._start([str(program), subcommand], env, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        return proc.pid, int(proc.stdout.readline())

    def end_all(self) -> None:
        # Ours to end, SIGKILL included (the DrainActor never does that); restarted
        # processes are children of this test process too.
        for child in psutil.Process().children(recursive=True):
            try:
                if str(self.bin_dir) in " ".join(child.cmdline()):
                    child.kill()
                    child.wait(timeout=UP_TIMEOUT)
            except psutil.Error:
                pass
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=UP_TIMEOUT)
            if proc.stdout is not None:
                proc.stdout.close()

    def _start(
        self, argv: list[str], env: dict[str, str], stdout: int = subprocess.DEVNULL
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            argv, cwd=self.cwd, env=env, stdout=stdout, stderr=subprocess.DEVNULL
        )
        self.started.append(proc)
        return proc

    @staticmethod
    def _listening(proc: subprocess.Popen[bytes], port: int) -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the stand-in exited {proc.returncode}")
        return not port_is_free(port)
