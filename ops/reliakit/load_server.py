"""`ops/load`: the `serve` child under load — starting and stopping it, its memory, and
whether it gave every batch slot back once the load stopped."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import httpx
import trio

from benchkit.contenders import Server, free_port, server_argv, tree_rss
from benchkit.plan import OURS
from reliakit.load_clients import client, normal_plan, send
from reliakit.load_summary import Stopped
from reliakit.load_verdict import classify

SLOT_GAUGES: Final = ("macprovider_running_requests", "macprovider_queued_requests")
SLOTS_TIMEOUT_S: Final = 15.0
POLL_S: Final = 0.1
RSS_PERIOD_S: Final = 0.2
STOP_TIMEOUT_S: Final = 30.0


def start_serve(model: Path, max_batch: int, max_queue: int, log: Path) -> Server:
    """A `serve` child on a free loopback port, ready; raises RuntimeError when it never is."""
    port = free_port()
    argv = [*server_argv(OURS, model, port, None, max_batch), "--max-queue", str(max_queue)]
    server = Server(OURS, argv, port, log)
    try:
        server.wait_ready()
    except RuntimeError:
        stop_serve(server.proc)
        raise
    return server


def stop_serve(proc: subprocess.Popen[bytes]) -> Stopped:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; a no-op for a process already gone."""
    started = time.perf_counter()
    if proc.poll() is not None:
        return Stopped(proc.returncode, 0.0, by_us=False)
    proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    return Stopped(code, time.perf_counter() - started, by_us=True)


class RssPeak:
    """The largest resident size of the server's process tree seen so far, in bytes."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = tree_rss(pid)

    def sample(self) -> int:
        rss = tree_rss(self.pid)
        self.peak = max(self.peak, rss)
        return rss

    async def watch(self) -> None:
        while True:
            await trio.to_thread.run_sync(self.sample)
            await trio.sleep(RSS_PERIOD_S)


def gauges(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """The unlabelled samples named `names` in a Prometheus text exposition."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            found[name] = float(value)
    return found


def slots_text(values: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {values.get(name, 'missing')}" for name in SLOT_GAUGES)


async def wait_slots_free(base_url: str) -> tuple[float | None, str]:
    """Polls /metrics until no request runs or waits: the seconds it took (None when the
    gauges were still above 0 after SLOTS_TIMEOUT_S) and the last values seen."""
    started = trio.current_time()
    seen = "no /metrics answer"
    async with client(base_url) as http:
        with trio.move_on_after(SLOTS_TIMEOUT_S):
            while True:
                try:
                    values = gauges((await http.get("/metrics")).text, SLOT_GAUGES)
                    seen = slots_text(values)
                    if all(values.get(name) == 0 for name in SLOT_GAUGES):
                        return trio.current_time() - started, seen
                except httpx.TransportError as error:
                    seen = f"/metrics failed: {type(error).__name__}"
                await trio.sleep(POLL_S)
    return None, seen


async def answer_problem(base_url: str) -> str | None:
    """Why a normal request on a fresh connection failed; None when it was answered well."""
    async with client(base_url) as http:
        attempt = await send(http, normal_plan())
    if attempt.status != 200:
        return classify(attempt).problem or f"status {attempt.status}"
    return classify(attempt).problem
