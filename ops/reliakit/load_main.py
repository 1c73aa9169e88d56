"""`ops/load`'s command line: start `serve`, load it, check it afterwards, report."""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import trio

from benchkit.contenders import Server
from benchkit.docs import provenance, write_docs
from benchkit.places import ROOT, fixtures_dir
from reliakit.load_clients import CUT_SECONDS, MAX_CUT_CHUNKS, run_load
from reliakit.load_server import (
    SLOTS_TIMEOUT_S,
    RssPeak,
    answer_problem,
    start_serve,
    stop_serve,
    wait_slots_free,
)
from reliakit.load_summary import (
    EXIT_INTERRUPTED,
    EXIT_NO_SERVER,
    MB,
    Aftermath,
    Report,
    Settings,
    Tally,
    as_json,
    exit_code,
    final_line,
    render,
)

DOC: Final = ROOT / "docs" / "RELIABILITY.md"
DOC_WIDTH: Final = 95  # the hand-written text of the page wraps there too
PROGRESS_S: Final = 10.0
LEGEND: Final = (
    "A request is bad when its answer is a 5xx other than a 503 with `Retry-After`, a 4xx "
    "(every request sent is valid), a transport failure the client did not cause, a stream "
    "that ends without `data: [DONE]` or carries a malformed or non-OpenAI chunk, or a body "
    "that is not the OpenAI object its status promises. A client that gets a 503 waits about "
    'its `Retry-After` before its next request; "cut by us" counts requests the client '
    f"abandoned on purpose (a stream closed after 0-{MAX_CUT_CHUNKS} data events, a plain "
    f"request given up after {CUT_SECONDS[0]:g}-{CUT_SECONDS[1]:g} s). The run passes when "
    "no request is bad, the running and queued gauges of `/metrics` are back at 0 within "
    f"{SLOTS_TIMEOUT_S:g} s of the last answer, and a normal request is then answered."
)

EPILOG = """\
exit codes: 0 no bad answer and every batch slot free afterwards; 1 a bad answer (a 5xx other
than a 503 with Retry-After, a 4xx, a transport failure we did not cause, a stream without
[DONE] or with a malformed chunk, a body that is not an OpenAI object), slots still taken
after the load, or no normal answer after it; 2 a bad flag; 3 `serve` did not become ready;
130 interrupted (Ctrl-C).
docs/RELIABILITY.md holds the latest figures."""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ops/load",
        description="Many clients, some disconnecting mid-answer, against a real `serve` on a\n"
        "free loopback port; counts every answer and checks the server afterwards.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, help="a model folder (default: the small fixture)")
    parser.add_argument("--max-batch", type=int, default=4, help="serve's --max-batch (4)")
    parser.add_argument("--max-queue", type=int, default=16, help="serve's --max-queue (16)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (64)")
    parser.add_argument("--seconds", type=float, default=120.0, help="load duration (120)")
    parser.add_argument("--seed", type=int, help="replays the clients' choices (default: random)")
    parser.add_argument(
        "--disconnect",
        type=float,
        default=0.3,
        help="share of requests the client cuts mid-way (0.3)",
    )
    parser.add_argument("--json", type=Path, help="write the raw counts here")
    parser.add_argument(
        "--write-docs", action="store_true", help="regenerate docs/RELIABILITY.md's load section"
    )
    args = parser.parse_args(argv)
    if args.clients < 1 or args.max_batch < 1 or args.max_queue < 0:
        parser.error("--clients and --max-batch must be ≥ 1 and --max-queue ≥ 0")
    if not 0 < args.seconds <= 3600:
        parser.error(f"--seconds must be above 0 and at most 3600; got {args.seconds:g}")
    if not 0 <= args.disconnect <= 1:
        parser.error(f"--disconnect must be from 0 to 1; got {args.disconnect:g}")
    if args.model is not None and not args.model.is_dir():
        parser.error(f"--model {args.model} is not a folder")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(command)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**9)
    print(f"load: seed {seed}", flush=True)
    model = (args.model if args.model is not None else fixtures_dir() / "small").resolve()
    settings = Settings(
        seed,
        args.clients,
        args.seconds,
        str(model),
        args.max_batch,
        args.max_queue,
        args.disconnect,
    )
    log = Path(tempfile.mkdtemp(prefix="macprovider-load-")) / "serve.log"
    print(f"load: starting serve on {model.name}, its log in {log}", file=sys.stderr)
    try:
        server = start_serve(model, args.max_batch, args.max_queue, log)
    except RuntimeError as error:
        print(f"load: serve did not become ready (its log is {log}): {error}")
        return EXIT_NO_SERVER
    try:
        report = trio.run(_measure, settings, server)
    except KeyboardInterrupt:
        print("load: interrupted; stopping serve", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        stop_serve(server.proc)  # a no-op once _measure stopped it
    if report.passed:
        shutil.rmtree(log.parent)  # kept only when there is something to look into
    else:
        print(f"load: serve's log ({log}) ends: {server.tail()}", file=sys.stderr)
    table = render(report)
    print(table)
    if args.json is not None:
        args.json.write_text(json.dumps(as_json(report), indent=2) + "\n")
    if args.write_docs:
        legend = textwrap.fill(LEGEND, width=DOC_WIDTH)
        body = "\n\n".join([provenance(command, tool="ops/load"), table, legend])
        write_docs("load", body, doc=DOC)
    print(final_line(report))
    return exit_code(report)


async def _measure(settings: Settings, server: Server) -> Report:
    base_url = f"http://127.0.0.1:{server.port}"
    tally, rss = Tally(), RssPeak(server.proc.pid)
    start_rss = rss.peak
    print(
        f"load: {settings.clients} clients for {settings.seconds:g} s against {base_url}",
        file=sys.stderr,
    )
    async with trio.open_nursery() as watchers:
        watchers.start_soon(rss.watch)
        watchers.start_soon(_progress, tally)
        elapsed = await run_load(
            base_url,
            clients=settings.clients,
            seconds=settings.seconds,
            seed=settings.seed,
            disconnect=settings.disconnect,
            record=tally.add,
        )
        watchers.cancel_scope.cancel()
    slots_free_s, slots_seen = await wait_slots_free(base_url)
    problem = await answer_problem(base_url)
    end_rss = rss.sample()
    rss_mb = (start_rss / MB, rss.peak / MB, end_rss / MB)
    after = Aftermath(slots_free_s, slots_seen, problem)
    stopped = await trio.to_thread.run_sync(stop_serve, server.proc)
    return Report(settings, tally, elapsed, rss_mb, after, stopped)


async def _progress(tally: Tally) -> None:
    started = trio.current_time()
    while True:
        await trio.sleep(PROGRESS_S)
        elapsed = trio.current_time() - started
        print(
            f"load: {elapsed:.0f} s, {tally.total} requests, {tally.bad} bad",
            file=sys.stderr,
            flush=True,
        )
