"""`ops/chaos`: random signals at random moments to `autotune` and `run`, then the invariants.

    ops/chaos [--iterations N] [--seed S] [--json FILE] [--write-docs]

It prints its random seed first, then one line per iteration and a final `chaos: F failures in N
iterations (seed S)`; exit 0 with no failure, 1 otherwise, 64 on a bad flag. A failed
iteration's folder (the command's stdout, stderr, DB, config, provider logs) is kept and
named. The same seed replays the same iterations.

On Linux the suite runs as the init of its own PID namespace (`unshare`): the commands it
starts then see no provider of anyone else on the machine (autotune would refuse them, or
with `--drain` stop them), and every orphan is reparented to it, where it is watched dying.
Without a namespace the `--drain` iterations are skipped, for the same reason.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Final, NoReturn

from benchkit.docs import provenance, write_docs
from benchkit.places import ROOT, fixtures_dir
from reliakit.chaos_checks import failures
from reliakit.chaos_plan import Plan, Scenario, calibration_plan, pick_plan
from reliakit.chaos_render import (
    Result,
    docs_body,
    failure_count,
    iteration_lines,
    records_json,
    summary_line,
)
from reliakit.chaos_run import (
    Natural,
    Outcome,
    Setting,
    calibrate,
    natural_duration,
    private_interpreter,
    run_plan,
)

EX_USAGE: Final = 64
ISOLATED_ENV: Final = "RELIAKIT_CHAOS_ISOLATED"
UNSHARE: Final = ("unshare", "--pid", "--fork", "--mount-proc")
# Without privileges, a user namespace makes the PID namespace possible.
UNSHARE_AS_USER: Final = ("unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc")
DOC: Final = ROOT / "docs" / "RELIABILITY.md"


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"chaos: error: {message}", file=sys.stderr)
        sys.exit(EX_USAGE)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def parse(argv: list[str]) -> argparse.Namespace:
    parser = Parser(prog="ops/chaos", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--iterations", type=_positive, default=100, metavar="N")
    parser.add_argument("--seed", type=int, default=None, help="[default: random, printed]")
    parser.add_argument("--json", type=Path, metavar="FILE", help="keep every iteration here")
    parser.add_argument(
        "--write-docs", action="store_true", help="replace the chaos section of RELIABILITY.md"
    )
    return parser.parse_args(argv)


def isolate(argv: list[str]) -> bool:
    """Re-executes this command in its own PID namespace (see the module docstring) and
    never returns there; True when already inside one, False when none can be had."""
    if os.environ.get(ISOLATED_ENV):
        return True
    if sys.platform != "linux" or shutil.which(UNSHARE[0]) is None:
        return False
    why = "?"
    for unshare in (UNSHARE, UNSHARE_AS_USER):
        probe = subprocess.run([*unshare, "true"], capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            os.environ[ISOLATED_ENV] = "1"
            script = str(Path(sys.argv[0]).resolve())
            sys.stdout.flush()
            # --kill-child: the namespace (and everything in it) dies with `unshare` itself.
            os.execvp(unshare[0], [*unshare, "--kill-child", sys.executable, script, *argv])
        why = (probe.stderr.strip().splitlines() or [why])[-1]
    print(f"chaos: warning: no PID namespace ({why})", file=sys.stderr)
    return False


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # As a namespace's init, SIGTERM without a handler would be ignored.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    args = parse(args_list)
    isolated = isolate(args_list)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    print(f"chaos: seed {seed}", flush=True)
    if not isolated:
        print("chaos: warning: not isolated; autotune-drain iterations are skipped", flush=True)
    parent = Path(tempfile.mkdtemp(prefix="chaos-"))
    setting = Setting(fixtures_dir(), parent, private_interpreter(parent))
    results: list[Result] = []
    naturals: dict[Scenario, Natural] = {}
    try:
        for index in range(args.iterations):
            plan = pick_plan(seed, index)
            if plan.scenario is Scenario.DRAIN and not isolated:
                print(f"{index:>4} {plan.scenario.value}: skipped (not isolated)", flush=True)
                continue
            if plan.scenario not in naturals:
                calibration = calibration_plan(plan.scenario)
                naturals[plan.scenario], outcome = calibrate(calibration, setting)
                results.append(_judge(calibration, None, naturals[plan.scenario], outcome))
            natural = naturals[plan.scenario]
            outcome = run_plan(plan, natural, setting)
            results.append(_judge(plan, plan, natural, outcome))
            observed = natural_duration(plan, outcome)
            if observed is not None:
                naturals[plan.scenario] = natural.seen(observed)
    except KeyboardInterrupt:
        print("chaos: interrupted", flush=True)
    finally:
        if not any(result.failures for result in results):
            shutil.rmtree(parent, ignore_errors=True)
    print(summary_line(results, seed), flush=True)
    if args.json is not None:
        args.json.write_text(records_json(results, seed))
    if args.write_docs:
        body = docs_body(results, seed, provenance(args_list, tool="ops/chaos"))
        write_docs("chaos", body, doc=DOC)
    return 0 if failure_count(results) == 0 else 1


def _judge(plan: Plan, planned: Plan | None, natural: Natural, outcome: Outcome) -> Result:
    """The verdict on one run, printed as it comes; a passing run's folder is removed."""
    found = tuple(failures(plan.scenario, outcome.facts, may_write=plan.apply))
    if not found:
        shutil.rmtree(outcome.folder, ignore_errors=True)
    result = Result(
        plan=planned,
        scenario=plan.scenario,
        natural_s=natural.duration_s,
        delay_s=outcome.delay_s,
        duration_s=outcome.duration_s,
        facts=outcome.facts,
        failures=found,
        folder=str(outcome.folder) if found else None,
    )
    for line in iteration_lines(result):
        print(line, flush=True)
    return result
