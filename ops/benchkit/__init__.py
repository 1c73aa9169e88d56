"""Benchmarks: serving overhead and batching against raw mlx-lm and mlx_lm.server,
and where the demo autotune's time goes.

`ops/bench [--model PATH] [--repetitions N] [--quick] [--streams 1,2,4,8] [--mixed]
[--unquantized-only] [--json FILE] [--write-docs]`

Contenders, all on the same model, prompt (exact token count, the model's own tokenizer and
chat template), `max_tokens` and client:

- `raw`: `mlx_lm.stream_generate` in this process, the engine limit (single stream only);
- `engine`: mlx-lm's `BatchGenerator` in this process with all C streams inserted at once,
  the batching limit (unquantized sweep only: mlx-lm cannot batch a quantized cache);
- `ours`: `macprovider-supervise serve --no-join --max-batch C [--kv-bits 8]`;
- `mlx_lm.server`: `--decode-concurrency C --prompt-concurrency C [--kv-bits 8
  --quantized-kv-start 0]` (its kv-bits path serves one request at a time).

With `--mixed`, the "mixed requests" configuration runs beside the plain (greedy) one:
stream i gets its own temperature, top-p, seed and three biased tokens
(`plan.mixed_sampling`) on top of the banned stop tokens, as a server's clients differ.
Contenders `engine_mixed` (mlx-lm's `BatchGenerator` with a sampler and a logit-bias
processor per stream: its per-row path, which `serve` used before its batch step),
`step_mixed` (the same streams through `serve`'s whole-batch step, in this process) and
`ours_mixed` (the same requests to `ours`).

Each server is started once per configuration (kv-bits × concurrency), waited for
(`/v1/models` 200), warmed up with one replicate, then measured; the contenders are
interleaved repetition by repetition in a rotating order so machine drift hits all alike.
The client is autotune's probe (`measure_replicate`): streaming chat completions at
temperature 0 with `stream_options.include_usage`, the stop tokens banned through
`logit_bias` so every request generates exactly `max_tokens`. Every prompt (every stream's,
every repetition's) starts with a different three-word prefix, so no prompt cache
(mlx_lm.server keeps one) can serve a measured prompt's prefill from another request.

Definitions:
- decode tok/s (single stream) = (generated tokens − 1) / (wall − TTFT): the rate after the
  first token, wall running from the request's start to the stream's end;
- aggregate tok/s (C streams) = all streams' tokens / the replicate's wall time (first
  request start to last stream end), as autotune ranks cells;
- TTFT = request start to the first non-empty content chunk (raw: call to first token);
  p50/p95 are nearest-rank over every stream of every repetition;
- RSS = resident set of the server's process tree (psutil): idle after the warm-up, before
  any measured load; peak sampled every 50 ms from start to stop.

`ops/bench autotune [--json FILE] [--write-docs]` runs the demo autotune (ops/demo's flags,
its own temporary DB and state folder, a free port, `-v`) and splits its wall time per
stage from the log lines, the provider logs and the DB (see `AUTOTUNE_METHOD`).
"""
