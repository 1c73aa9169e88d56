"""The one resolver for serve's knobs: CLI > environment > YAML config > default.

Every command resolves knobs here, so a value means the same thing, and fails the same way,
whichever layer it came from. `KNOBS` (plus `CONFIG_OPTION`) is also the table the CLI turns
into `serve`'s options and `--help`, so a knob is declared exactly once.

Pure functions: the only I/O is reading the YAML file. CLI values arrive as raw strings, like
environment values, so that a bad `--kv-bits 7` and a bad `MACPROVIDER_KV_BITS=7` produce the
same one-line `ConfigError`.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any, Generic, TypeVar

import yaml

from macprovider.server.errors import ConfigError

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
    "UNSET_TOKEN",
    "CliOption",
    "KnobSpec",
    "ServeConfig",
    "default_max_context",
    "is_loopback_host",
    "load_config_file",
    "resolve_serve_config",
    "serve_flags",
]

T = TypeVar("T")
V = TypeVar("V")

GIB = 1 << 30
# The memory limit's unit: SI, so a limit in GB reads as bytes by moving the decimal point.
# RAM comes in GiB: a "16 GB" Mac has 16 GiB, 17.18 GB.
GB = 1_000_000_000

# (RAM up to and including, served context): tiers of DESIGN §4. A "16 GB" Mac reports exactly
# 16 GiB, so the bounds are inclusive.
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
UNSET_TOKEN = "unset"

# Of the keys only the YAML file carries (passed on uninterpreted), those never to echo.
SECRET_YAML_ONLY_KEYS = frozenset({"provider_token"})
_SHOWN_VALUE_MAX = 60


def default_max_context(ram_bytes: int) -> int:
    """The served context window for a machine with `ram_bytes` of RAM (DESIGN §4 tiers)."""
    for ram_limit, context in _CONTEXT_TIERS:
        if ram_bytes <= ram_limit:
            return context
    return _CONTEXT_ABOVE_TIERS


def is_loopback_host(host: str) -> bool:
    """True for `localhost` and loopback IPs, the only binds allowed without an API key."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


# --- value checks -------------------------------------------------------------------------------


class _Invalid(ValueError):
    """A value broke its knob's rule; the message states the rule, the caller adds value/source."""


def _kind(value: object) -> str:
    names = {"bool": "a boolean", "int": "an integer", "float": "a float", "str": "a string"}
    names |= {"list": "a list", "dict": "a mapping", "NoneType": "null"}
    name = type(value).__name__
    return names.get(name, f"a {name}")


@dataclass(frozen=True)
class _IntRange:
    """An integer knob: decimal digits from text, a real int (never a bool) from YAML."""

    low: int
    high: int | None = None

    @property
    def rule(self) -> str:
        if self.high is None:
            return f"must be an integer ≥ {self.low}"
        return f"must be an integer from {self.low} to {self.high}"

    def from_text(self, raw: str) -> int:
        # int() alone would also take "1_000" and non-ASCII digits; an operator's typo should fail.
        text = raw.strip()
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            raise _Invalid(self.rule)
        return self._in_range(int(text))

    def from_yaml(self, value: object) -> int:
        # bool is a subclass of int: `max_concurrency_override: true` must not read as 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"{self.rule}, not {_kind(value)}")
        return self._in_range(value)

    def _in_range(self, number: int) -> int:
        if number < self.low or (self.high is not None and number > self.high):
            raise _Invalid(self.rule)
        return number


_KV_BITS_RULE = f"must be 4 or 8, or {UNSET_TOKEN} for an unquantized cache"


def _kv_bits_from_text(raw: str) -> int | None:
    token = raw.strip().lower()
    if token == UNSET_TOKEN:
        return None
    if token in ("4", "8"):
        return int(token)
    raise _Invalid(_KV_BITS_RULE)


def _kv_bits_from_yaml(value: object) -> int | None:
    # YAML null and the `unset` token both mean "unquantized"; numbers must be real ints.
    if value is None or (isinstance(value, str) and value.strip().lower() == UNSET_TOKEN):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value in (4, 8):
        return value
    raise _Invalid(_KV_BITS_RULE)


_MEMORY_LIMIT_RULE = (
    f"must be a positive number of GB (1 GB = 10^9 bytes), e.g. 0.5 or 16, or {UNSET_TOKEN} "
    "for no limit"
)


def _gb_from_text(raw: str) -> float | None:
    token = raw.strip()
    if token.lower() == UNSET_TOKEN:
        return None
    # float() alone would also take "nan", "1e3", "1_0" and non-ASCII digits.
    if not re.fullmatch(r"\+?(?:[0-9]+\.?[0-9]*|\.[0-9]+)", token):
        raise _Invalid(_MEMORY_LIMIT_RULE)
    return _positive_gb(float(token))


def _gb_from_yaml(value: object) -> float | None:
    if isinstance(value, str) and value.strip().lower() == UNSET_TOKEN:
        return None
    # bool is a subclass of int: `memory_limit_gb: true` must not read as 1 GB.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"{_MEMORY_LIMIT_RULE}, not {_kind(value)}")
    return _positive_gb(float(value))


def _positive_gb(gb: float) -> float:
    # YAML's .nan and .inf are floats; a digit string too long for a float reads as inf.
    if not (math.isfinite(gb) and gb > 0):
        raise _Invalid(_MEMORY_LIMIT_RULE)
    return gb


def _text_from_text(raw: str) -> str:
    if not raw.strip():
        raise _Invalid("must not be empty")
    return raw


def _text_from_yaml(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be a string, not {_kind(value)}")
    return _text_from_text(value)


def _const(value: T) -> Callable[[int], T]:
    return lambda _ram_bytes: value


# --- the knob table -----------------------------------------------------------------------------


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


_POSITIVE = _IntRange(1)
_TIERS_HELP = ", ".join(f"≤{limit // GIB} GiB {ctx}" for limit, ctx in _CONTEXT_TIERS)

MODEL: KnobSpec[str | None] = KnobSpec(
    name="model",
    flag="--model",
    env="MACPROVIDER_MODEL",
    help="Model to serve: a Hugging Face repo id or a local path to MLX weights.",
    default_help="none (required)",
    yaml_key="model",
    from_text=_text_from_text,
    from_yaml=_text_from_yaml,
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
    from_text=_kv_bits_from_text,
    from_yaml=_kv_bits_from_yaml,
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
    default_help=f"by RAM: {_TIERS_HELP}, more {_CONTEXT_ABOVE_TIERS}",
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
    from_text=_IntRange(0).from_text,
    from_yaml=_IntRange(0).from_yaml,
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
    from_text=_gb_from_text,
    from_yaml=_gb_from_yaml,
    default=_const(None),
)
PORT: KnobSpec[int] = KnobSpec(
    name="port",
    flag="--port",
    env="MACPROVIDER_PORT",
    help="TCP port to listen on.",
    default_help=str(DEFAULT_PORT),
    yaml_key="port",
    from_text=_IntRange(1, 65535).from_text,
    from_yaml=_IntRange(1, 65535).from_yaml,
    default=_const(DEFAULT_PORT),
)
HOST: KnobSpec[str] = KnobSpec(
    name="host",
    flag="--host",
    env="MACPROVIDER_HOST",
    help="Address to bind; anything beyond loopback requires an API key.",
    default_help=DEFAULT_HOST,
    yaml_key="host",
    from_text=_text_from_text,
    from_yaml=_text_from_yaml,
    default=_const(DEFAULT_HOST),
)
API_KEY: KnobSpec[str | None] = KnobSpec(
    name="api_key",
    flag="--api-key",
    env="MACPROVIDER_API_KEY",
    help="Bearer key every request must carry; required to bind beyond loopback.",
    default_help="none",
    yaml_key="api_key",
    from_text=_text_from_text,
    from_yaml=_text_from_yaml,
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


# --- the resolved configuration ---------------------------------------------------------------


@dataclass(frozen=True)
class ServeConfig:
    """Every serve knob resolved and checked, plus where each value came from.

    `sources` maps a knob name (and `config`, `coordinator_endpoint`, `provider_token`) to
    `--flag`, `env NAME`, `<path> (yaml_key)` or `default`.
    """

    model: str | None
    kv_bits: int | None
    max_context: int
    max_batch: int
    max_queue: int
    memory_limit_gb: float | None  # None: no limit
    port: int
    host: str
    api_key: str | None = field(repr=False)  # kept out of logs that print the config
    coordinator_endpoint: str | None
    provider_token: str | None = field(repr=False)
    config_path: Path
    sources: Mapping[str, str]


# --- the YAML file --------------------------------------------------------------------------------


def load_config_file(path: Path, *, missing_ok: bool = False) -> dict[str, object]:
    """The top-level mapping of the YAML config at `path` (an empty file reads as `{}`).

    Raises ConfigError when the file is missing (unless `missing_ok`), unreadable, malformed or
    not a mapping. Non-string keys are dropped: they belong to no knob, like unknown keys.
    """
    return _load(path, named_by=None, missing_ok=missing_ok)


def _load(path: Path, *, named_by: str | None, missing_ok: bool) -> dict[str, object]:
    where = f"config file {path}" + (f" from {named_by}" if named_by else "")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise ConfigError(f"{where} does not exist") from None
    except OSError as err:
        raise ConfigError(f"cannot read {where}: {err.strerror or err}") from None
    try:
        document = yaml.safe_load(data)
    # ValueError: PyYAML builds dates itself, and `2024-13-01` fails in datetime.
    except (yaml.YAMLError, ValueError) as err:
        raise ConfigError(f"malformed YAML in {where}: {_yaml_problem(err)}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"{where} must hold a mapping at its top level, not {_kind(document)}")
    return {key: value for key, value in document.items() if isinstance(key, str)}


def _yaml_problem(err: Exception) -> str:
    if isinstance(err, yaml.MarkedYAMLError) and err.problem and err.problem_mark:
        mark = err.problem_mark
        return f"{err.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(err).split())  # PyYAML's own text spans several lines


def _config_location(
    cli: Mapping[str, str | None], env: Mapping[str, str]
) -> tuple[Path, str, bool]:
    """(path, source, named explicitly?) of the YAML config."""
    raw = cli.get(CONFIG_OPTION.name)
    if raw is not None:
        return _explicit_path(raw, CONFIG_OPTION.flag), CONFIG_OPTION.flag, True
    if CONFIG_OPTION.env in env:
        source = f"env {CONFIG_OPTION.env}"
        return _explicit_path(env[CONFIG_OPTION.env], source), source, True
    folder, source = config_dir(env)
    return folder / "config.yaml", source, False


def config_dir(env: Mapping[str, str]) -> tuple[Path, str]:
    """macprovider's config folder (config.yaml, the autotune DB) and what chose it:
    `$XDG_CONFIG_HOME/macprovider`, else `~/.config/macprovider`."""
    # The XDG spec says to ignore an empty or relative XDG_CONFIG_HOME.
    xdg = env.get("XDG_CONFIG_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "macprovider", "env XDG_CONFIG_HOME"
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return home / ".config" / "macprovider", "default"


def _explicit_path(raw: str, source: str) -> Path:
    if not raw.strip():
        raise ConfigError(f"invalid {CONFIG_OPTION.name} {raw!r} from {source}: must not be empty")
    return Path(raw).expanduser()


# --- resolution -----------------------------------------------------------------------------------


def _show(value: object, secret: bool) -> str:
    if secret and value:
        return "<hidden>"
    text = repr(value)  # quoted and escaped: always one line
    return text if len(text) <= _SHOWN_VALUE_MAX else text[: _SHOWN_VALUE_MAX - 3] + "..."


def _check(parse: Callable[[V], T], raw: V, name: str, source: str, secret: bool) -> tuple[T, str]:
    try:
        return parse(raw), source
    except _Invalid as rule:
        raise ConfigError(f"invalid {name} {_show(raw, secret)} from {source}: {rule}") from None


@dataclass
class _Layers:
    """The four layers of one resolution; `get` records each knob's source as it goes."""

    cli: Mapping[str, str | None]
    env: Mapping[str, str]
    document: Mapping[str, object]
    path: Path
    ram_bytes: int
    sources: dict[str, str] = field(default_factory=dict)

    def get(self, spec: KnobSpec[T]) -> T:
        value, self.sources[spec.name] = self._pick(spec)
        return value

    def yaml_only(self, key: str) -> str | None:
        if self.document.get(key) is None:
            self.sources[key] = "default"
            return None
        value, self.sources[key] = self._yaml(
            key, key, _text_from_yaml, key in SECRET_YAML_ONLY_KEYS
        )
        return value

    def _pick(self, spec: KnobSpec[T]) -> tuple[T, str]:
        raw = self.cli.get(spec.name)
        if raw is not None:
            return _check(spec.from_text, raw, spec.name, spec.flag, spec.secret)
        if spec.env in self.env:
            source = f"env {spec.env}"
            return _check(spec.from_text, self.env[spec.env], spec.name, source, spec.secret)
        if spec.yaml_key in self.document and (
            self.document[spec.yaml_key] is not None or spec.none_is_value
        ):
            return self._yaml(spec.name, spec.yaml_key, spec.from_yaml, spec.secret)
        return spec.default(self.ram_bytes), "default"

    def _yaml(
        self, name: str, key: str, parse: Callable[[object], T], secret: bool
    ) -> tuple[T, str]:
        return _check(parse, self.document[key], name, f"{self.path} ({key})", secret)


def resolve_serve_config(
    cli: Mapping[str, str | None],
    env: Mapping[str, str],
    *,
    ram_bytes: int,
    require_model: bool = True,
) -> ServeConfig:
    """Resolve every knob CLI > env > YAML > default and preflight the result.

    `cli` maps option names (`CliOption.name`: `kv_bits`, `config`, ...) to the raw strings
    typed, or None when not given; other keys are ignored. Raises ConfigError, one line naming
    the value and its source, on the first invalid knob.
    """
    path, path_source, explicit = _config_location(cli, env)
    document = _load(path, named_by=path_source if explicit else None, missing_ok=not explicit)
    layers = _Layers(cli, env, document, path, ram_bytes)
    config = ServeConfig(
        model=layers.get(MODEL),
        kv_bits=layers.get(KV_BITS),
        max_context=layers.get(MAX_CONTEXT),
        max_batch=layers.get(MAX_BATCH),
        max_queue=layers.get(MAX_QUEUE),
        memory_limit_gb=layers.get(MEMORY_LIMIT_GB),
        port=layers.get(PORT),
        host=layers.get(HOST),
        api_key=layers.get(API_KEY),
        coordinator_endpoint=layers.yaml_only("coordinator_endpoint"),
        provider_token=layers.yaml_only("provider_token"),
        config_path=path,
        sources=MappingProxyType({**layers.sources, CONFIG_OPTION.name: path_source}),
    )
    if require_model and config.model is None:
        raise ConfigError(f"no model to serve: {_where_to_set(MODEL, path)}")
    _check_bind(config)
    return config


def _where_to_set(spec: KnobSpec[T], path: Path) -> str:
    return f"pass {spec.flag}, set {spec.env} or put {spec.yaml_key}: in {path}"


def _check_bind(config: ServeConfig) -> None:
    # Beyond loopback anyone on the network could use the model; refuse rather than serve openly.
    if config.api_key is not None or is_loopback_host(config.host):
        return
    raise ConfigError(
        f"refusing host {config.host!r} from {config.sources[HOST.name]} without an API key: "
        f"binding beyond loopback needs one ({_where_to_set(API_KEY, config.config_path)})"
    )
