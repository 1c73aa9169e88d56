"""`ops/bench` (serve): plan, run, summarize, report."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict

from benchkit.docs import machine_line, provenance, write_docs
from benchkit.measure import run_bench
from benchkit.places import fixtures_dir
from benchkit.plan import (
    CONCURRENCY,
    KV_SETTINGS,
    PROMPT_LENGTHS,
    QUICK_CONCURRENCY,
    QUICK_PROMPT_LENGTHS,
    Plan,
)
from benchkit.render import render_report
from benchkit.summary import summarize


def make_plan(args: argparse.Namespace) -> Plan:
    model = args.model if args.model is not None else fixtures_dir() / "small"
    return Plan(
        model=model.resolve(),
        repetitions=1 if args.quick else args.repetitions,
        concurrency=args.streams or (QUICK_CONCURRENCY if args.quick else CONCURRENCY),
        prompt_lengths=QUICK_PROMPT_LENGTHS if args.quick else PROMPT_LENGTHS,
        kv_settings=(None,) if args.unquantized_only else KV_SETTINGS,
        max_tokens=args.max_tokens,
        quick=args.quick,
        mixed=args.mixed,
    )


def bench_main(args: argparse.Namespace, command: Sequence[str]) -> int:
    plan = make_plan(args)
    started = time.perf_counter()
    results = run_bench(plan)
    summary = summarize(plan, results)
    report = render_report(plan, results, summary)
    elapsed = time.perf_counter() - started
    print(report)
    print(f"bench: {elapsed:.0f} s", file=sys.stderr)
    if args.json is not None:
        document = {
            "plan": {**asdict(plan), "model": str(plan.model)},
            "machine": machine_line(),
            "elapsed_s": elapsed,
            "samples": [asdict(s) for s in results.samples],
            "memory": [asdict(m) for m in results.memory],
            "errors": results.errors,
            "load_average_at_start": results.load_before,
            "foreign_cpu_s": results.foreign_cpu_s,
            "summary": summary,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    if args.write_docs:
        write_docs("bench", provenance(command) + "\n\n" + report)
    return 1 if results.errors else 0
