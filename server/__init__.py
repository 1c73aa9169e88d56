"""The provider process: an OpenAI-compatible HTTP API over one MLX engine thread.

The modules the other layers (`macprovider.actors`, `macprovider.cli`, the tools in `ops/`) may
import, and what each is for; the rest serve requests inside the provider. Names only, nothing
imported here: the supervisor imports the light modules below, and must not pay for MLX, trio or
Quart by importing the package.

Light (no MLX, no web stack), for every layer:
- `knobs`: the knob table (`KNOBS`, `TUNED_KNOBS`, `SERVE_OPTIONS`, `serve_flags`).
- `config`: resolving the knobs flag > environment > YAML > default (`resolve_serve_config`).
- `knob_values`: how a knob's value is read and checked, and the GB/GiB units.
- `places`: the config and state folders (XDG).
- `errors`: the provider's typed errors (`ServeError` and the start-up failures).
- `models`: where a model's weights are on this machine (`resolve_model_path`).
- `safetensors_headers`: what a weight file's header says (dtypes, shapes, sizes).
- `parent_guard`: the parent-death pipe and signal a supervised provider arms.
- `redaction`: secrets out of the command lines we print.

Heavy (MLX, the web stack):
- `main`: `run`, serving one provider until a signal (what `serve` calls).
- `batch_generator`, `batch_sampling`: the engine's whole-batch decode step (the benchmark
  also drives it directly, without a server).

docs/ARCHITECTURE.md maps every module of the package.
"""
