"""Where things are: the checkout, the performance page, the fixture models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[2]  # ops/benchkit/places.py → the checkout
DOCS: Final = ROOT / "docs" / "PERFORMANCE.md"


def fixtures_dir() -> Path:
    """Builds (or reuses) the fixture models; ops/fixtures.py prints their folder last."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "ops" / "fixtures.py")],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(done.stdout.strip().splitlines()[-1])
