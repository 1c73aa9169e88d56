"""The knob table: every serve knob, once, with everything each layer calls it.

A `KnobSpec` names the knob's flag, environment variable and YAML key, how each source's value
is checked, its default and its `--help` text; for the knobs autotune measures (`TUNED_KNOBS`)
also the autotune JSON field and the `tune_trials` column. The CLI turns `SERVE_OPTIONS` into
`serve`'s options, `serve_flags` turns knob values back into `serve`'s argv, and the
recommendation, the terminal block and the HTML report read names from here, so a knob is
declared exactly once. The knob's name (`KnobSpec.name`) is also the field that holds its value
in Python (`ServeConfig`, `Knobs`, `Cell`): one name per knob across layers.

Imports no YAML parser: the supervisor and the report read the table without paying for one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Generic, TypeVar

from macprovider.server.knob_values import (
    GIB,
    UNSET_TOKEN,
    IntRange,
    gb_from_text,
    gb_from_yaml,
    kv_bits_from_text,
    kv_bits_from_yaml,
    text_from_text,
    text_from_yaml,
)

__all__ = [
    "API_KEY",
    "CONFIG_OPTION",
    "HOST",
    "KNOBS",
    "KV_BITS",
    "MAX_BATCH",
    "MAX_CONTEXT",
    "MAX_QUEUE",
    "MEMORY_LIMIT_GB",
    "MODEL",
    "PORT",
    "SECRET_YAML_ONLY_KEYS",
    "SERVE_OPTIONS",
    "TUNED_KNOBS",
    "CliOption",
    "KnobSpec",
    "default_context_for",
    "default_max_context",
    "serve_flags",
]

T = TypeVar("T")

# (RAM up to and including, served context): a machine with more RAM has room for a longer KV
# cache beside the weights. A "16 GB" Mac reports exactly 16 GiB, so the bounds are inclusive.
_CONTEXT_TIERS: tuple[tuple[int, int], ...] = (
    (8 * GIB, 20_000),
    (16 * GIB, 50_000),
    (32 * GIB, 120_000),
)
_CONTEXT_ABOVE_TIERS = 200_000

DEFAULT_MAX_BATCH = 1
DEFAULT_MAX_QUEUE = 64
DEFAULT_PORT = 18080
DEFAULT_HOST = "127.0.0.1"

# Of the keys only the YAML file carries (passed on uninterpreted), those never to echo.
SECRET_YAML_ONLY_KEYS = frozenset({"provider_token"})


def default_max_context(ram_bytes: int) -> int:
    """The served context window for a machine with `ram_bytes` of RAM (by RAM tier)."""
    for ram_limit, context in _CONTEXT_TIERS:
        if ram_bytes <= ram_limit:
            return context
    return _CONTEXT_ABOVE_TIERS


def default_context_for(ram_bytes: int, trained: int | None) -> int:
    """The served context window of a model trained for `trained` tokens (None: unknown) on a
    machine with `ram_bytes` of RAM: the RAM tier, at most the trained context, since positions
    past it were never trained and only cost KV-cache memory."""
    tier = default_max_context(ram_bytes)
    return tier if trained is None else min(tier, trained)


def _const(value: T) -> Callable[[int], T]:
    return lambda _ram_bytes: value


@dataclass(frozen=True)
class CliOption:
    """What the CLI needs to generate one option of `serve` and its `--help` line."""

    name: str  # also the key of the `cli` mapping (click's parameter name for `flag`)
    flag: str
    env: str
    help: str
    default_help: str


@dataclass(frozen=True)
class KnobSpec(CliOption, Generic[T]):
    """One serve knob: where it is read from, how each source's value is checked, its default."""

    yaml_key: str
    from_text: Callable[[str], T]  # CLI and environment values
    from_yaml: Callable[[object], T]  # values already typed by the YAML parser
    default: Callable[[int], T]  # given the machine's RAM in bytes
    # True when None is one of the knob's values (kv_bits: unquantized), spelled `unset` and
    # shown as such; for other knobs None is "not set here" (a YAML null lets the layers below
    # apply) and has no text.
    none_is_value: bool = False
    secret: bool = False  # never echo the value in an error message
    # The tuned knobs only (None for the others): the chart's short label prefix (`kv8 b2`),
    # the field of autotune's JSON `knobs` object and the `tune_trials` column.
    short: str | None = None
    json_key: str | None = None
    db_column: str | None = None

    @property
    def display(self) -> str:
        """The name the operator reads beside a value (`max-batch 2`): the flag's own words."""
        return self.flag.removeprefix("--")

    def text(self, value: T) -> str:
        """`value` as the text `from_text` reads back to it: what a flag carries and what the
        operator reads. None is `unset`, which only a `none_is_value` knob reads back."""
        if value is None:
            return UNSET_TOKEN
        # Decimal: the shortest text of a float, never an exponent (`1e-05`), which the GB
        # parser refuses.
        return format(Decimal(repr(value)), "f") if isinstance(value, float) else str(value)


_POSITIVE = IntRange(1)
_TIERS_HELP = ", ".join(f"≤{limit // GIB} GiB {ctx}" for limit, ctx in _CONTEXT_TIERS)

MODEL: KnobSpec[str | None] = KnobSpec(
    name="model",
    flag="--model",
    env="MACPROVIDER_MODEL",
    help="Model to serve: a folder of MLX weights, a name in the models folder (`models import`, "
    "`models list`) or a Hugging Face repo id already in the local cache (`models pull`).",
    default_help="none (required)",
    yaml_key="model",
    from_text=text_from_text,
    from_yaml=text_from_yaml,
    default=_const(None),
)
KV_BITS: KnobSpec[int | None] = KnobSpec(
    name="kv_bits",
    flag="--kv-bits",
    env="MACPROVIDER_KV_BITS",
    help=f"Quantize the KV cache to 4 or 8 bits from the first token; {UNSET_TOKEN} keeps it "
    "unquantized.",
    default_help=f"{UNSET_TOKEN} (unquantized)",
    yaml_key="kv_bits",
    from_text=kv_bits_from_text,
    from_yaml=kv_bits_from_yaml,
    default=_const(None),
    none_is_value=True,
    short="kv",
    json_key="kv_bits",
    db_column="kv_bits",
)
MAX_CONTEXT: KnobSpec[int] = KnobSpec(
    name="max_context",
    flag="--max-context",
    env="MACPROVIDER_MAX_CONTEXT_OVERRIDE",
    help="Longest prompt served, in tokens: a longer one gets HTTP 413 before any compute, and "
    "the KV cache never holds more.",
    default_help=f"by RAM: {_TIERS_HELP}, more {_CONTEXT_ABOVE_TIERS}; at most the model's "
    "trained context",
    yaml_key="max_context_override",
    from_text=_POSITIVE.from_text,
    from_yaml=_POSITIVE.from_yaml,
    default=default_max_context,
    short="c",
    json_key="max_context_override",
    db_column="max_context_cap",
)
MAX_BATCH: KnobSpec[int] = KnobSpec(
    name="max_batch",
    flag="--max-batch",
    env="MACPROVIDER_MAX_CONCURRENCY_OVERRIDE",
    help="Requests decoded together (continuous batching).",
    default_help=str(DEFAULT_MAX_BATCH),
    yaml_key="max_concurrency_override",
    from_text=_POSITIVE.from_text,
    from_yaml=_POSITIVE.from_yaml,
    default=_const(DEFAULT_MAX_BATCH),
    short="b",
    json_key="max_concurrency_override",
    db_column="max_batch",
)
MAX_QUEUE: KnobSpec[int] = KnobSpec(
    name="max_queue",
    flag="--max-queue",
    env="MACPROVIDER_MAX_QUEUE",
    help="Requests that may wait for a batch slot; beyond that the server answers 503.",
    default_help=str(DEFAULT_MAX_QUEUE),
    yaml_key="max_queue",
    from_text=IntRange(0).from_text,
    from_yaml=IntRange(0).from_yaml,
    default=_const(DEFAULT_MAX_QUEUE),
)
MEMORY_LIMIT_GB: KnobSpec[float | None] = KnobSpec(
    name="memory_limit_gb",
    flag="--memory-limit-gb",
    env="MACPROVIDER_MEMORY_LIMIT_GB",
    help="Memory the provider may use, in GB of 10^9 bytes (a '16 GB' Mac has 16 GiB = 17.18 GB): "
    "it refuses to start (exit 65) if the weights plus a KV cache filled to the max context for "
    f"every batch slot need more; {UNSET_TOKEN} removes the limit.",
    default_help=f"{UNSET_TOKEN} (no limit)",
    yaml_key="memory_limit_gb",
    from_text=gb_from_text,
    from_yaml=gb_from_yaml,
    default=_const(None),
)
PORT: KnobSpec[int] = KnobSpec(
    name="port",
    flag="--port",
    env="MACPROVIDER_PORT",
    help="TCP port to listen on.",
    default_help=str(DEFAULT_PORT),
    yaml_key="port",
    from_text=IntRange(1, 65535).from_text,
    from_yaml=IntRange(1, 65535).from_yaml,
    default=_const(DEFAULT_PORT),
)
HOST: KnobSpec[str] = KnobSpec(
    name="host",
    flag="--host",
    env="MACPROVIDER_HOST",
    help="Address to bind; anything beyond loopback requires an API key.",
    default_help=DEFAULT_HOST,
    yaml_key="host",
    from_text=text_from_text,
    from_yaml=text_from_yaml,
    default=_const(DEFAULT_HOST),
)
API_KEY: KnobSpec[str | None] = KnobSpec(
    name="api_key",
    flag="--api-key",
    env="MACPROVIDER_API_KEY",
    help="Bearer key every request must carry; required to bind beyond loopback.",
    default_help="none",
    yaml_key="api_key",
    from_text=text_from_text,
    from_yaml=text_from_yaml,
    default=_const(None),
    secret=True,
)
CONFIG_OPTION = CliOption(
    name="config",
    flag="--config",
    env="MACPROVIDER_CONFIG",
    help="YAML config read for knobs given neither on the command line nor in the environment.",
    default_help="$XDG_CONFIG_HOME/macprovider/config.yaml, else ~/.config/macprovider/config.yaml",
)

# Any: the knobs differ in value type; each is typed where ServeConfig is built from it.
KNOBS: tuple[KnobSpec[Any], ...] = (
    MODEL,
    KV_BITS,
    MAX_CONTEXT,
    MAX_BATCH,
    MAX_QUEUE,
    MEMORY_LIMIT_GB,
    PORT,
    HOST,
    API_KEY,
)
# Everything `serve` takes as an option, in `--help` order.
SERVE_OPTIONS: tuple[CliOption, ...] = (*KNOBS, CONFIG_OPTION)
# The knobs autotune measures, in the order the operator reads them (the recommendation, its
# serve command, the report's columns); each has a `short`, a `json_key` and a `db_column`.
TUNED_KNOBS: tuple[KnobSpec[Any], ...] = (KV_BITS, MAX_BATCH, MAX_CONTEXT)


def serve_flags(values: Mapping[str, object]) -> list[str]:
    """`serve`'s flags setting each knob named in `values` (by `KnobSpec.name`) to its value,
    in `KNOBS` order; a None value is left out. Each value is written as text its knob reads
    back to the same value. A secret knob is refused: a command line is public (`ps`)."""
    unknown = values.keys() - {spec.name for spec in KNOBS}
    if unknown:
        raise ValueError(f"not serve knobs: {', '.join(sorted(unknown))}")
    flags: list[str] = []
    for spec in KNOBS:
        value = values.get(spec.name)
        if value is None:
            continue
        if spec.secret:
            raise ValueError(f"{spec.flag} never goes on a command line; use {spec.env}")
        flags += [spec.flag, spec.text(value)]
    return flags
