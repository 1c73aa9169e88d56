"""The command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from benchkit.autotune_time import autotune_main
from benchkit.plan import MAX_TOKENS
from benchkit.serving import bench_main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ops/bench",
        description="Serving benchmark (default) or `autotune`: the demo autotune's time split.",
        epilog="ops/benchkit/__init__.py defines every figure; docs/PERFORMANCE.md has the latest.",
    )
    parser.add_argument("what", nargs="?", choices=["serve", "autotune"], default="serve")
    parser.add_argument("--model", type=Path, help="a model folder (default: the small fixture)")
    parser.add_argument(
        "--repetitions", type=int, default=5, help="measured repetitions per figure (5)"
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=MAX_TOKENS,
        help=f"new tokens per request, stop tokens banned ({MAX_TOKENS})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 repetition, concurrency 1 and 4, prompt length 128 only: a smoke run",
    )
    parser.add_argument(
        "--mixed",
        action="store_true",
        help="also measure mixed requests: each stream its own temperature, top-p, seed, bias",
    )
    parser.add_argument(
        "--streams",
        type=lambda text: tuple(int(c) for c in text.split(",")),
        help="the concurrency sweep, comma-separated (default 1,2,4,8; --quick 1,4)",
    )
    parser.add_argument(
        "--unquantized-only", action="store_true", help="leave out the --kv-bits 8 sweep"
    )
    parser.add_argument("--json", type=Path, help="write every sample and the summary here")
    parser.add_argument(
        "--write-docs", action="store_true", help="regenerate docs/PERFORMANCE.md's section"
    )
    args = parser.parse_args(argv)
    if args.repetitions < 1 or args.max_tokens < 2:
        parser.error("--repetitions must be ≥ 1 and --max-tokens ≥ 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(command)
    if args.what == "autotune":
        return autotune_main(args, command)
    return bench_main(args, command)


if __name__ == "__main__":
    sys.exit(main())
