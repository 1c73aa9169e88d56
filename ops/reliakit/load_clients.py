"""`ops/load`: the clients. Each loops over short random requests until the deadline, cutting
some of them on purpose, and hands what came back to `record`.

Every client has its own connection (kept alive between its requests, as an OpenAI SDK
client's is) and its own random sequence derived from the run's seed and its index, so a
seed replays the same choices (the interleaving still depends on timing).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final

import httpx
import trio

from reliakit.load_verdict import SHAPES, Attempt, RequestShape, Verdict, classify, data_events

PROMPTS: Final = (
    "Tell me about the river.",
    "Once upon a time",
    "The weather today is",
    "Write one line about ships.",
    "What is a garden?",
    "The old house on the hill",
)
MAX_TOKENS: Final = 16
MAX_CUT_CHUNKS: Final = 4  # a cut stream is closed after 0..4 data events
CUT_SECONDS: Final = (0.01, 0.5)  # a cut plain request is abandoned after this long
REQUEST_TIMEOUT_S: Final = 60.0  # a whole answer later than this is a failure
MAX_REQUESTS_PER_CLIENT: Final = 100_000
MAX_BACKOFF_S: Final = 5.0

Record = Callable[[RequestShape, Verdict], None]


@dataclass(frozen=True)
class Plan:
    """One request: its shape and body, and where we cut it (both None: read it all)."""

    shape: RequestShape
    body: dict[str, Any]
    cut_after_chunks: int | None = None
    cut_after_s: float | None = None

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.shape.endpoint == "chat" else "/v1/completions"

    def explain(self, verdict: Verdict) -> Verdict:
        """The verdict, a bad one naming the exact request so it can be sent again."""
        if verdict.problem is None:
            return verdict
        cut = ""
        if self.cut_after_chunks is not None:
            cut = f", cut after {self.cut_after_chunks} data events"
        elif self.cut_after_s is not None:
            cut = f", cut after {self.cut_after_s:.2f} s"
        sent = f"POST {self.path} {json.dumps(self.body)}{cut}"
        return replace(verdict, problem=f"{verdict.problem} [sent: {sent}]")


def plan_request(rng: random.Random, disconnect: float) -> Plan:
    shape = rng.choice(SHAPES)
    prompt = rng.choice(PROMPTS)
    body: dict[str, Any] = {
        "max_tokens": rng.randint(1, MAX_TOKENS),
        "temperature": rng.choice((0.0, 0.7)),
        "stream": shape.stream,
    }
    if shape.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if shape.stream and rng.random() < 0.5:
        body["stream_options"] = {"include_usage": True}
    if rng.random() >= disconnect:
        return Plan(shape, body)
    if shape.stream:
        return Plan(shape, body, cut_after_chunks=rng.randint(0, MAX_CUT_CHUNKS))
    return Plan(shape, body, cut_after_s=rng.uniform(*CUT_SECONDS))


def normal_plan() -> Plan:
    """The plain chat request sent once the load is over: the server must still answer it."""
    body = {"messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 4}
    return Plan(RequestShape("chat", stream=False), body)


def backoff_s(retry_after: str | None, rng: random.Random) -> float:
    """How long a client honouring Retry-After waits, jittered so clients do not come back
    in lockstep; an unreadable value counts as one second."""
    try:
        wait = float(retry_after or "")
    except ValueError:
        wait = 1.0
    return min(max(wait, 0.0), MAX_BACKOFF_S) * rng.uniform(0.5, 1.5)


def client(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=REQUEST_TIMEOUT_S,
        limits=httpx.Limits(max_connections=1),
        trust_env=False,  # loopback only: never through a proxy from the environment
    )


async def run_load(
    base_url: str, *, clients: int, seconds: float, seed: int, disconnect: float, record: Record
) -> float:
    """Runs the clients until `seconds` have passed (each then finishes its request);
    returns the seconds until the last one stopped."""
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for index in range(clients):
            rng = random.Random(f"{seed}:{index}")
            nursery.start_soon(_client_loop, base_url, rng, started + seconds, disconnect, record)
    return trio.current_time() - started


async def _client_loop(
    base_url: str, rng: random.Random, deadline: float, disconnect: float, record: Record
) -> None:
    async with client(base_url) as http:
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            if trio.current_time() >= deadline:
                return
            plan = plan_request(rng, disconnect)
            attempt = await send(http, plan)
            record(plan.shape, plan.explain(classify(attempt)))
            # Like a real client, wait before coming back to a busy or unreachable server;
            # a dead server then costs a few requests per client, not a busy loop.
            if attempt.status == 503 or attempt.failure is not None:
                await trio.sleep(backoff_s(attempt.retry_after, rng))


async def send(http: httpx.AsyncClient, plan: Plan) -> Attempt:
    with trio.move_on_after(REQUEST_TIMEOUT_S):
        if plan.shape.stream:
            return await _stream(http, plan)
        return await _plain(http, plan)
    return Attempt(plan.shape, failure=f"no whole answer within {REQUEST_TIMEOUT_S:.0f} s")


async def _plain(http: httpx.AsyncClient, plan: Plan) -> Attempt:
    with trio.move_on_after(math.inf if plan.cut_after_s is None else plan.cut_after_s):
        try:
            response = await http.post(plan.path, json=plan.body)
        except httpx.TransportError as error:
            return Attempt(plan.shape, failure=_describe(error))
        retry_after = response.headers.get("retry-after")
        return Attempt(plan.shape, response.status_code, retry_after, response.content)
    return Attempt(plan.shape, cut=True)


async def _stream(http: httpx.AsyncClient, plan: Plan) -> Attempt:
    status: int | None = None
    retry_after: str | None = None
    body = bytearray()
    try:
        async with http.stream("POST", plan.path, json=plan.body) as response:
            status, retry_after = response.status_code, response.headers.get("retry-after")
            cut_after = plan.cut_after_chunks if status == 200 else None

            def enough() -> bool:
                return cut_after is not None and data_events(bytes(body)) >= cut_after

            cut = enough()
            if not cut:
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if enough():
                        cut = True
                        break
            return Attempt(plan.shape, status, retry_after, bytes(body), cut=cut)
    except httpx.TransportError as error:
        return Attempt(plan.shape, status, retry_after, bytes(body), failure=_describe(error))


def _describe(error: httpx.TransportError) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
