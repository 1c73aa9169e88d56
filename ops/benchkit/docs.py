"""Where the figures go: docs/PERFORMANCE.md's generated sections, with provenance."""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import psutil

from benchkit.places import DOCS, ROOT


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = psutil.virtual_memory().total / 1024**3
    import mlx.core as mx

    return (
        f"{platform.system()} {platform.release()} {platform.machine()}, {cpu}, "
        f"{os.cpu_count()} CPUs, {ram:.1f} GiB RAM; Python {platform.python_version()}, "
        f"mlx {version('mlx')} ({mx.default_device()}), mlx-lm {version('mlx-lm')}"
    )


def write_docs(section: str, body: str, doc: Path = DOCS) -> None:
    """Replaces the text between `<!-- section:start -->` and `<!-- section:end -->` in `doc`
    (docs/PERFORMANCE.md unless told; the section is appended when absent): hand-written notes
    around the generated figures survive a regeneration."""
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = doc.read_text() if doc.exists() else f"# {doc.stem.title()}\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    print(f"wrote {doc.relative_to(ROOT)} ({section})", file=sys.stderr)


def provenance(command: Sequence[str], tool: str = "ops/bench") -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            f"Command: `{shlex.join([tool, *command])}`",
            "",
            f"Date: {now}",
            "",
            f"Machine: {machine_line()}",
        ]
    )
