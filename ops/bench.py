"""Single-stream serving overhead: `macprovider-supervise serve` against raw mlx-lm generation.

Both contenders run on the same fixture model, with the same prompt (token ids, so
both see exactly the same length), the same `max_tokens` and greedy decoding,
interleaved repetition by repetition so machine drift hits them alike. Decode
tok/s counts tokens after the first over the time after the first; TTFT is the
time to the first token (for the server: request start to first content chunk).
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

READY_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Sample:
    contender: str
    tokens: int
    ttft_s: float
    decode_tps: float


def prompt_ids(length: int, vocab_size: int) -> list[int]:
    # Deterministic, spread over the vocabulary, clear of the special tokens at its start.
    return [(37 * i) % (vocab_size - 64) + 32 for i in range(length)]


def raw_sample(model: object, tokenizer: object, prompt: list[int], max_tokens: int) -> Sample:
    import mlx.core as mx
    from mlx_lm.generate import stream_generate

    started = time.perf_counter()
    stamps = [
        time.perf_counter()
        for _ in stream_generate(model, tokenizer, mx.array(prompt), max_tokens=max_tokens)
    ]
    span = stamps[-1] - stamps[0]
    decode = (len(stamps) - 1) / span if span > 0 else 0.0
    return Sample("raw mlx_lm.stream_generate", len(stamps), stamps[0] - started, decode)


def server_sample(url: str, prompt: list[int], max_tokens: int) -> Sample:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    stamps: list[float] = []
    tokens = 0
    started = time.perf_counter()
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as response:
        for line in response.iter_lines():
            # Parse only the last event: the client's own work per token is kept minimal.
            if line.startswith("data: {") and '"text":""' not in line:
                stamps.append(time.perf_counter())
            if '"usage"' in line:
                tokens = json.loads(line[6:])["usage"]["completion_tokens"]
    # Chunks can carry several tokens; the usage count is the truth.
    span = stamps[-1] - stamps[0] if stamps else 0.0
    decode = (tokens - 1) / span if span > 0 else 0.0
    return Sample("macprovider serve", tokens, stamps[0] - started if stamps else 0.0, decode)


def start_server(model: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "macprovider.cli", "serve", "--no-join", "--model", str(model)]
    proc = subprocess.Popen([*argv, "--port", str(port)], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("bench: the server did not become ready")


def summarize(samples: list[Sample]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in sorted({s.contender for s in samples}):
        mine = [s for s in samples if s.contender == name]
        tps = [s.decode_tps for s in mine]
        out[name] = {
            "decode_tps_median": statistics.median(tps),
            "decode_tps_min": min(tps),
            "decode_tps_max": max(tps),
            "ttft_s_median": statistics.median(s.ttft_s for s in mine),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write every sample and the summary here")
    args = parser.parse_args()

    from mlx_lm.utils import load

    model, tokenizer = load(str(args.model))
    prompt = prompt_ids(args.prompt_tokens, len(tokenizer))
    proc, url = start_server(args.model)
    samples: list[Sample] = []
    try:
        raw_sample(model, tokenizer, prompt, 8)  # warm-up both
        server_sample(url, prompt, 8)
        for _ in range(args.repetitions):
            samples.append(raw_sample(model, tokenizer, prompt, args.max_tokens))
            samples.append(server_sample(url, prompt, args.max_tokens))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    summary = summarize(samples)
    ours = summary["macprovider serve"]["decode_tps_median"]
    raw = summary["raw mlx_lm.stream_generate"]["decode_tps_median"]
    print(f"| contender | decode tok/s median (min–max) | TTFT median | n={args.repetitions} |")
    print("|---|---|---|---|")
    for name, row in summary.items():
        spread = f"{row['decode_tps_min']:.1f}–{row['decode_tps_max']:.1f}"
        ttft = f"{row['ttft_s_median'] * 1000:.1f} ms"
        print(f"| {name} | {row['decode_tps_median']:.1f} ({spread}) | {ttft} | |")
    print(f"\nsingle_vs_raw = {ours / raw:.3f}")
    if args.json:
        report = {
            "samples": [asdict(s) for s in samples],
            "summary": {"single_vs_raw": ours / raw, **summary},
        }
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
