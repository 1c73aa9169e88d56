"""The one resolver for serve's knobs: CLI > environment > YAML config > default.

Every command resolves knobs here, so a value means the same thing, and fails the same way,
whichever layer it came from. The knobs themselves are declared once, in the knob table
(`server.knobs`); their value checks live in `server.knob_values`, the folders in
`server.places`. The table's names are re-exported here, so a caller that resolves knobs
imports one module.

Pure functions: the only I/O is reading the YAML file, and, once the model's folder is known
(`resolve_model`), its config.json for the context it was trained for. CLI values arrive as raw
strings, like environment values, so that a bad `--kv-bits 7` and a bad `MACPROVIDER_KV_BITS=7`
produce the same one-line `ConfigError`.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

import yaml

from macprovider.server.errors import ConfigError
from macprovider.server.knob_values import GB, KnobValueError, kind_of, text_from_yaml
from macprovider.server.knobs import (
    API_KEY,
    CONFIG_OPTION,
    HOST,
    KNOBS,
    KV_BITS,
    MAX_BATCH,
    MAX_CONTEXT,
    MAX_QUEUE,
    MEMORY_LIMIT_GB,
    MODEL,
    PORT,
    SECRET_YAML_ONLY_KEYS,
    SERVE_OPTIONS,
    CliOption,
    KnobSpec,
    default_context_for,
    default_max_context,
    serve_flags,
)
from macprovider.server.model_facts import read_config, trained_context
from macprovider.server.models import resolve_model_path
from macprovider.server.places import config_dir

# Besides the resolver's own names, the knob table's and the folder's that its callers use
# beside it: a caller resolving knobs imports one module.
__all__ = [
    "API_KEY",
    "CONFIG_OPTION",
    "GB",
    "KNOBS",
    "KV_BITS",
    "MAX_BATCH",
    "MAX_CONTEXT",
    "MEMORY_LIMIT_GB",
    "MODEL",
    "SERVE_OPTIONS",
    "CliOption",
    "KnobSpec",
    "ServeConfig",
    "config_dir",
    "config_location",
    "default_context_for",
    "default_max_context",
    "fit_context",
    "is_loopback_host",
    "load_config_file",
    "resolve_model",
    "resolve_serve_config",
    "serve_flags",
    "yaml_problem",
]

T = TypeVar("T")
V = TypeVar("V")

log = logging.getLogger("macprovider.serve")

_SHOWN_VALUE_MAX = 60


def is_loopback_host(host: str) -> bool:
    """True for `localhost` and loopback IPs, the only binds allowed without an API key."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


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
        raise ConfigError(f"malformed YAML in {where}: {yaml_problem(err)}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"{where} must hold a mapping at its top level, not {kind_of(document)}")
    return {key: value for key, value in document.items() if isinstance(key, str)}


def yaml_problem(err: Exception) -> str:
    if isinstance(err, yaml.MarkedYAMLError) and err.problem and err.problem_mark:
        mark = err.problem_mark
        return f"{err.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(err).split())  # PyYAML's own text spans several lines


def config_location(
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
    except KnobValueError as rule:
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
            key, key, text_from_yaml, key in SECRET_YAML_ONLY_KEYS
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
    path, path_source, explicit = config_location(cli, env)
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


# --- the model's own limits -----------------------------------------------------------------


def fit_context(config: ServeConfig, trained: int | None, *, ram_bytes: int) -> ServeConfig:
    """`config` with its context fitted to a model trained for `trained` tokens (None: unknown).

    A default context becomes `default_context_for`'s (the RAM tier, at most `trained`); a set
    one is honoured, with a warning when it is longer than `trained`: positions past the trained
    context were never trained, so answers may degrade, and the KV cache may grow that long.
    """
    source = config.sources[MAX_CONTEXT.name]
    if source == "default":
        fitted = default_context_for(ram_bytes, trained)
        if fitted == config.max_context:
            return config
        sources = {**config.sources, MAX_CONTEXT.name: "default (the model's trained context)"}
        return replace(config, max_context=fitted, sources=MappingProxyType(sources))
    if trained is not None and config.max_context > trained:
        log.warning(
            "warning: max context %d from %s is above the %d tokens the model was trained for; "
            "serving it as set",
            config.max_context,
            source,
            trained,
        )
    return config


def resolve_model(config: ServeConfig, *, ram_bytes: int) -> tuple[ServeConfig, Path]:
    """The model's folder (`resolve_model_path`) and `config` fitted to it (`fit_context`): what
    `serve` and `run` do once the knobs are resolved. A config.json that does not parse names
    no trained context here; loading the model reports it."""
    assert config.model is not None  # resolve_serve_config's require_model guarantees it
    folder = resolve_model_path(config.model)
    try:
        trained = trained_context(read_config(folder))
    except (OSError, ValueError):
        trained = None
    return fit_context(config, trained, ram_bytes=ram_bytes), folder
