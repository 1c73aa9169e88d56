"""The DrainActor's decisions, plain functions: which command lines are providers, what the
operator runs to stop or restore a finding by hand, and the refusal without `--drain`.

Command lines are shown only through `shown_argv` (`redact_argv`): a foreground
`serve --api-key K` must not put K in our log or on the terminal.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from macprovider.actors import service_manager as manager
from macprovider.actors.messages import Finding
from macprovider.server.redaction import redact_argv

__all__ = [
    "CLI_MODULE",
    "PROGRAM_NAMES",
    "PROVIDER_SUBCOMMANDS",
    "conflict_message",
    "manual_restore_command",
    "manual_stop_command",
    "one_line",
    "provider_subcommand",
    "service_platform",
    "shown_argv",
]

DETAIL_MAX_CHARS: Final = 240

PROGRAM_NAMES: Final = frozenset({"macprovider-supervise", "macprovider-cli"})
CLI_MODULE: Final = "macprovider.cli"
# `run` counts: it is a provider too, one that starts `serve` again when it dies.
PROVIDER_SUBCOMMANDS: Final = frozenset({"serve", "run"})

_PYTHON: Final = re.compile(r"python[0-9.]*", re.IGNORECASE)  # macOS framework: `Python`
_PYTHON_OPTIONS_WITH_VALUE: Final = frozenset({"-W", "-X", "--check-hash-based-pycs"})


def provider_subcommand(argv: Sequence[str]) -> str | None:
    """The subcommand of a macprovider command line (`serve`, `run`, …), else None.

    The program is argv[0] itself, or the script or `-m macprovider.cli` that a Python
    interpreter runs (a console script runs as `python /path/macprovider-supervise`). Its
    name must be equal, not similar: `macprovider-supervise-helper` is another program.
    The subcommand is the first argument that is not an option, compared whole.
    """
    if not argv:
        return None
    head = os.path.basename(argv[0])
    if head in PROGRAM_NAMES:
        args: list[str] | None = list(argv[1:])
    elif _PYTHON.fullmatch(head):
        args = _python_program_args(list(argv[1:]))
    else:
        return None
    if args is None:
        return None
    return next((arg for arg in args if not arg.startswith("-")), None)


def _python_program_args(args: list[str]) -> list[str] | None:
    """After an interpreter's own options: the macprovider program's arguments, or None."""
    while args:
        arg, args = args[0], args[1:]
        if arg == "-m":
            return args[1:] if args[:1] == [CLI_MODULE] else None
        if arg in _PYTHON_OPTIONS_WITH_VALUE:
            args = args[1:]
        elif arg.startswith("-m"):  # `-mmacprovider.cli`
            return args if arg[2:] == CLI_MODULE else None
        elif arg == "-" or arg.startswith("-c"):  # a script from stdin or the command line
            return None
        elif not arg.startswith("-"):
            return args if os.path.basename(arg) in PROGRAM_NAMES else None
    return None


def service_platform(finding: Finding) -> manager.Platform:
    """The service manager of a launchd or systemd finding."""
    return "macos" if finding.kind == "launchd" else "linux"


def manual_stop_command(finding: Finding, *, uid: int, port: int) -> str:
    """What the operator runs to stop a finding themselves."""
    if finding.kind in ("launchd", "systemd"):
        argv = manager.stop(service_platform(finding), str(finding.service), uid=uid)
        return shlex.join(argv)
    if finding.kind == "foreground":
        return f"kill -TERM {finding.pid}"
    # Not a provider: first find out what it is.
    return f"lsof -nP -iTCP:{port} -sTCP:LISTEN"


def manual_restore_command(finding: Finding, *, uid: int, plist: Path) -> str | None:
    """What the operator runs to bring a drained finding back; None for a port finding."""
    if finding.kind in ("launchd", "systemd"):
        platform = service_platform(finding)
        return shlex.join(manager.start(platform, str(finding.service), uid=uid, plist=plist))
    if finding.kind == "foreground":
        command = shown_argv(finding.argv)
        return f"cd {shlex.quote(finding.cwd)} && {command}" if finding.cwd else command
    return None


def conflict_message(findings: Sequence[Finding], port: int, *, uid: int | None = None) -> str:
    """The refusal without `--drain`: what is running, and the two ways out."""
    uid = os.getuid() if uid is None else uid
    lines = ["a provider is already running; autotune would measure beside it:"]
    lines += [f"  {finding.name}: {finding.detail}" for finding in findings]
    providers = [finding for finding in findings if finding.kind != "port"]
    if providers:
        lines.append(
            "rerun with --drain: autotune stops it, tunes, then starts it again"
            " (a foreground process only with --restart-foreground)"
        )
    lines.append("or stop it yourself, then rerun:" if providers else "stop it yourself:")
    for finding in findings:
        command = manual_stop_command(finding, uid=uid, port=port)
        if finding.kind == "port":
            lines.append(f"  {command}   # --drain cannot stop it: find it, or use another --port")
        else:
            lines.append(f"  {command}")
    return "\n".join(lines)


def shown_argv(argv: Sequence[str]) -> str:
    """A command line as we print it: quoted for a shell, its secrets redacted."""
    return shlex.join(redact_argv(argv))


def one_line(text: str) -> str:
    """`text` on one line, at most DETAIL_MAX_CHARS long (a finding's detail, a problem)."""
    text = " ".join(text.split())
    return text if len(text) <= DETAIL_MAX_CHARS else text[: DETAIL_MAX_CHARS - 1] + "…"
