"""A provider's log file: one per start, named after what was started, and the lines of it
that explain a death (as opposed to what the provider was configured with)."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Final

TAIL_MAX_CHARS: Final = 2000
TAIL_LAST_LINES: Final = 5
TAIL_READ_BYTES: Final = 64 * 1024
LOG_NAME_ATTEMPTS: Final = 8
SLUG_MAX_CHARS: Final = 80

# Lines that say why a process died, as opposed to what it was configured with.
_TELLING: Final = re.compile(
    r"error|traceback|out of memory|\boom\b|killed|fatal|exception|panic|"
    r"segmentation fault|cannot allocate|insufficient memory",
    re.IGNORECASE,
)
_TRACEBACK_HEADER: Final = "Traceback (most recent call last)"
_UNSAFE_IN_NAME: Final = re.compile(r"[^A-Za-z0-9._-]+")


def model_slug(model: str) -> str:
    """The model id (repo id or path) as one safe file-name part."""
    slug = _UNSAFE_IN_NAME.sub("-", model)
    # Keep the end: a path's last parts name the model; leading dots would hide the file.
    slug = slug[-SLUG_MAX_CHARS:].lstrip(".-")
    return slug or "model"


def log_file_name(model: str, port: int, unix_ts: int, token: str) -> str:
    return f"{model_slug(model)}-{port}-{unix_ts}-{token}.log"


def _random_token() -> str:
    return secrets.token_hex(4)


def create_log_file(
    logs_dir: Path,
    model: str,
    port: int,
    *,
    unix_ts: int,
    new_token: Callable[[], str] = _random_token,
) -> tuple[Path, int]:
    """Creates a log file no other start has used (O_EXCL); returns its path and fd."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for _ in range(LOG_NAME_ATTEMPTS):
        path = logs_dir / log_file_name(model, port, unix_ts, new_token())
        try:
            return path, os.open(path, flags, 0o644)
        except FileExistsError:
            continue
    raise FileExistsError(f"{logs_dir}: no free log name after {LOG_NAME_ATTEMPTS} attempts")


def select_stderr_tail(
    text: str, *, max_chars: int = TAIL_MAX_CHARS, last_lines: int = TAIL_LAST_LINES
) -> str:
    """What best explains a death: the first telling line (and, for a traceback, its
    exception line), else the last non-empty lines; at most `max_chars`."""
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if _TELLING.search(line):
            return "\n".join([line, *_exception_line(lines, index)])[:max_chars]
    return "\n".join(lines[-last_lines:])[-max_chars:]


def _exception_line(lines: list[str], index: int) -> list[str]:
    # A traceback's header says nothing; its first unindented line after the frames does.
    if _TRACEBACK_HEADER not in lines[index]:
        return []
    for line in lines[index + 1 :]:
        if not line[0].isspace():
            return [line]
    return []


def read_log_tail(path: Path, max_bytes: int = TAIL_READ_BYTES) -> str:
    """The end of a log: a death is explained at the end, not in hours of old requests."""
    try:
        with path.open("rb") as log_file:
            size = log_file.seek(0, os.SEEK_END)
            log_file.seek(max(0, size - max_bytes))
            data = log_file.read()
    except OSError:
        return ""
    text = data.decode(errors="replace")
    # Drop a line cut in half by the window.
    return text.split("\n", 1)[-1] if size > max_bytes else text
