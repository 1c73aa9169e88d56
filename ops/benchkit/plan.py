"""What one bench run measures, and what it records: the plan, samples, memory readings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from macprovider.actors.tuning import Replicate

RAW: Final = "raw"
ENGINE: Final = "engine"
OURS: Final = "ours"
THEIRS: Final = "mlx_lm.server"
# The "mixed requests" configuration (`--mixed`): every stream its own temperature, top-p,
# seed and logit bias, as a server's clients send. Without it every stream is greedy.
ENGINE_MIXED: Final = "engine_mixed"
STEP_MIXED: Final = "step_mixed"
OURS_MIXED: Final = "ours_mixed"
LABELS: Final = {
    RAW: "raw mlx_lm.stream_generate",
    ENGINE: "raw mlx-lm BatchGenerator",
    OURS: "macprovider serve",
    THEIRS: "mlx_lm.server",
    ENGINE_MIXED: "raw mlx-lm BatchGenerator, mixed requests (per-row samplers)",
    STEP_MIXED: "our batch step in process, mixed requests",
    OURS_MIXED: "macprovider serve, mixed requests",
}
# In-process contenders: no server; the mixed one of ours is served by OURS's server.
IN_PROCESS: Final = frozenset({ENGINE, ENGINE_MIXED, STEP_MIXED})
SERVED_BY: Final = {OURS_MIXED: OURS}

CONCURRENCY: Final = (1, 2, 4, 8)
QUICK_CONCURRENCY: Final = (1, 4)
PROMPT_LENGTHS: Final = (128, 512, 2000)
QUICK_PROMPT_LENGTHS: Final = (128,)
KV_SETTINGS: Final[tuple[int | None, ...]] = (None, 8)
BASE_PROMPT_TOKENS: Final = 128
MAX_TOKENS: Final = 128
# The prompt-length sweep measures TTFT only: a few tokens after the first are enough.
SWEEP_MAX_TOKENS: Final = 8


def sweep_contenders(kv_bits: int | None, mixed: bool = False) -> tuple[str, ...]:
    """Who runs a sweep: the batched engine too when unquantized (mlx-lm has no batched
    quantized cache of its own); with `mixed`, each of ours and the engine's again with
    mixed requests."""
    if kv_bits is not None:
        return (OURS, THEIRS, OURS_MIXED) if mixed else (OURS, THEIRS)
    plain = (ENGINE, OURS, THEIRS)
    return (*plain, ENGINE_MIXED, STEP_MIXED, OURS_MIXED) if mixed else plain


@dataclass(frozen=True)
class StreamSampling:
    """One stream's parameters in the mixed configuration; `bias` is added to the banned
    stop tokens' logit bias."""

    temperature: float
    top_p: float
    seed: int
    bias: tuple[tuple[int, float], ...]


def mixed_sampling(stream: int) -> StreamSampling:
    """Stream `stream`'s own parameters: no two streams of a replicate share all of them.
    The biased tokens are low ids, present in every vocabulary."""
    return StreamSampling(
        temperature=0.5 + 0.1 * (stream % 6),
        top_p=0.8 + 0.02 * (stream % 8),
        seed=1000 + stream,
        bias=((100 + stream % 64, -2.0), (200 + stream % 32, 1.0), (300 + stream % 16, -5.0)),
    )


@dataclass(frozen=True)
class Plan:
    """What one bench run measures."""

    model: Path
    repetitions: int
    concurrency: tuple[int, ...]
    prompt_lengths: tuple[int, ...]
    kv_settings: tuple[int | None, ...]
    max_tokens: int
    quick: bool
    mixed: bool = False  # also measure the mixed-requests configuration


@dataclass(frozen=True)
class Sample:
    """One measured replicate: `concurrency` streams of one contender, or a raw generation.

    `kind` is `stream` (the base prompt, `max_tokens` new tokens: single stream and the
    concurrency sweeps) or `prompt` (the prompt-length sweep: TTFT).
    """

    contender: str
    kind: str
    kv_bits: int | None
    concurrency: int
    prompt_tokens: int
    max_tokens: int
    repetition: int
    position: int  # where this contender came in this repetition's rotation
    ok: bool
    reason: str | None
    tokens: int
    wall_s: float
    ttft_ms: list[float]
    aggregate_tps: float | None
    decode_tps: float | None  # single stream only


@dataclass(frozen=True)
class Memory:
    """One server's resident set in one configuration, in bytes."""

    contender: str
    kv_bits: int | None
    concurrency: int
    ready_s: float  # from start to `/v1/models` answering 200
    idle_rss: int
    peak_rss: int


@dataclass
class Results:
    samples: list[Sample] = field(default_factory=list)
    memory: list[Memory] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    load_before: float = 0.0  # the 1-minute load average when the run started
    foreign_cpu_s: float = 0.0  # CPU seconds other processes used during the run
    wall_s: float = 0.0


def sample_from(
    replicate: Replicate,
    contender: str,
    kind: str,
    kv_bits: int | None,
    concurrency: int,
    prompt_tokens: int,
    max_tokens: int,
    turn: tuple[int, int],
) -> Sample:
    """A replicate as a sample, with its rates computed (see the module docstring)."""
    measured = replicate.tokens > 0 and replicate.wall_s > 0
    ok = replicate.ok and measured and not replicate.stop_token_leaked
    reason = None
    if not ok:
        reason = replicate.reason or ("a stop token leaked" if measured else "nothing generated")
    aggregate = replicate.tokens / replicate.wall_s if ok else None
    decode = None
    if ok and concurrency == 1 and replicate.ttft_ms and replicate.tokens > 1:
        after_first = replicate.wall_s - replicate.ttft_ms[0] / 1000
        decode = (replicate.tokens - 1) / after_first if after_first > 0 else None
    return Sample(
        contender=contender,
        kind=kind,
        kv_bits=kv_bits,
        concurrency=concurrency,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        repetition=turn[0],
        position=turn[1],
        ok=ok,
        reason=reason,
        tokens=replicate.tokens,
        wall_s=replicate.wall_s,
        ttft_ms=list(replicate.ttft_ms),
        aggregate_tps=aggregate,
        decode_tps=decode,
    )
