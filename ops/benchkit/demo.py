"""The demo autotune's inputs, in one place: `ops/demo` runs them, `ops/bench autotune` times
them.

A real pretrained model in its two forms (SmolLM2-135M-Instruct as bf16 and as its lossless
4-bit GGUF copy, both 134.5M parameters) and the four trained fixtures, largest first, under a
provider memory budget (0.2 GB) that the bf16 form (0.27 GB of weights) does not fit: Stage 1
rejects it and picks the 4-bit copy, Stage 2 measures kv-bits unset,8 × max-batch 1,2. On two
CPU cores the real model decodes at about 8 tok/s, so prompts and answers are kept short and
the whole run takes about two minutes.
"""

from __future__ import annotations

import sys
from pathlib import Path

CANDIDATES = ("smollm2-135m", "smollm2-135m-q4", "large", "medium", "small", "tiny")


def demo_flags(fixtures: Path) -> list[str]:
    """`autotune`'s arguments for the demo, without where it writes (database, state)."""
    return [
        "--candidate-models",
        ",".join(str(fixtures / name) for name in CANDIDATES),
        "--target-context",
        "48",
        "--probe-max-tokens",
        "16",
        "--stage2-replicates",
        "2",
        "--kv-bits-axis",
        "unset,8",
        "--max-batch-axis",
        "1,2",
        "--provider-memory-limit-gb",
        "0.2",
    ]


if __name__ == "__main__":  # ops/demo: one flag a line
    print("\n".join(demo_flags(Path(sys.argv[1]))))
