"""The knob resolver: precedence, preflight errors, the YAML file and its location."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from macprovider.server.config import (
    CONFIG_OPTION,
    KNOBS,
    SERVE_OPTIONS,
    CliOption,
    KnobSpec,
    ServeConfig,
    default_max_context,
    load_config_file,
    resolve_serve_config,
)
from macprovider.server.errors import ConfigError

GIB = 1 << 30
RAM = 16 * GIB  # default max_context 50000
SPECS: dict[str, KnobSpec[object]] = {spec.name: spec for spec in KNOBS}
YAML_ONLY = ("coordinator_endpoint", "provider_token")


def config_file(tmp_path: Path) -> Path:
    """Where the resolver looks by default when the tests' XDG_CONFIG_HOME is in effect."""
    return tmp_path / "xdg" / "macprovider" / "config.yaml"


def write_yaml(path: Path, content: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def resolve(
    tmp_path: Path,
    *,
    cli: Mapping[str, str | None] | None = None,
    env: Mapping[str, str] | None = None,
    document: object = None,
    ram_bytes: int = RAM,
    require_model: bool = False,
) -> ServeConfig:
    """Resolve like the CLI does: every option present (None when not given)."""
    if document is not None:
        write_yaml(config_file(tmp_path), document)
    return resolve_serve_config(
        {**{option.name: None for option in SERVE_OPTIONS}, **(cli or {})},
        {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), **(env or {})},
        ram_bytes=ram_bytes,
        require_model=require_model,
    )


def config_error(tmp_path: Path, **kwargs: object) -> str:
    """The ConfigError message of a resolution that must fail; asserts it is one line."""
    with pytest.raises(ConfigError) as caught:
        resolve(tmp_path, **kwargs)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message
    return message


def text_source(source: str, name: str) -> str:
    return SPECS[name].flag if source == "cli" else f"env {SPECS[name].env}"


def text_layer(source: str, name: str, raw: str) -> dict[str, object]:
    if source == "cli":
        return {"cli": {name: raw}}
    return {"env": {SPECS[name].env: raw}}


# --- the table the CLI is generated from -------------------------------------------------------

OPERATOR_NAMES = [
    ("model", "--model", "MACPROVIDER_MODEL", "model"),
    ("kv_bits", "--kv-bits", "MACPROVIDER_KV_BITS", "kv_bits"),
    ("max_context", "--max-context", "MACPROVIDER_MAX_CONTEXT_OVERRIDE", "max_context_override"),
    (
        "max_batch",
        "--max-batch",
        "MACPROVIDER_MAX_CONCURRENCY_OVERRIDE",
        "max_concurrency_override",
    ),
    ("max_queue", "--max-queue", "MACPROVIDER_MAX_QUEUE", "max_queue"),
    ("memory_limit_gb", "--memory-limit-gb", "MACPROVIDER_MEMORY_LIMIT_GB", "memory_limit_gb"),
    ("port", "--port", "MACPROVIDER_PORT", "port"),
    ("host", "--host", "MACPROVIDER_HOST", "host"),
    ("api_key", "--api-key", "MACPROVIDER_API_KEY", "api_key"),
]


def test_knob_table_carries_the_operator_facing_names() -> None:
    table = [(spec.name, spec.flag, spec.env, spec.yaml_key) for spec in KNOBS]
    assert table == OPERATOR_NAMES
    assert (CONFIG_OPTION.flag, CONFIG_OPTION.env) == ("--config", "MACPROVIDER_CONFIG")


@pytest.mark.parametrize("option", SERVE_OPTIONS, ids=lambda option: option.name)
def test_option_name_is_the_click_parameter_name_of_its_flag(option: CliOption) -> None:
    assert option.name == option.flag.removeprefix("--").replace("-", "_")
    assert option.help and option.default_help


# --- precedence ---------------------------------------------------------------------------------

# knob: (CLI text, value), (env text, value), (YAML value, value), default at RAM
PRECEDENCE: dict[
    str, tuple[tuple[str, object], tuple[str, object], tuple[object, object], object]
] = {
    "model": (("cli/model", "cli/model"), ("env/model", "env/model"), ("yaml/m", "yaml/m"), None),
    "kv_bits": (("4", 4), ("unset", None), (8, 8), None),
    "max_context": (("1000", 1000), ("2000", 2000), (3000, 3000), 50_000),
    "max_batch": (("2", 2), ("3", 3), (4, 4), 1),
    "max_queue": (("0", 0), ("5", 5), (6, 6), 64),
    "memory_limit_gb": (("0.05", 0.05), ("16", 16.0), (2.5, 2.5), None),
    "port": (("1", 1), ("65535", 65535), (8080, 8080), 18080),
    "host": (("127.0.0.2", "127.0.0.2"), ("::1", "::1"), ("localhost", "localhost"), "127.0.0.1"),
    "api_key": (("k-cli", "k-cli"), ("k-env", "k-env"), ("k-yaml", "k-yaml"), None),
}
LAYERS = ("cli", "env", "yaml", "default")


def test_precedence_table_covers_every_knob() -> None:
    assert set(PRECEDENCE) == set(SPECS)


@pytest.mark.parametrize("top", LAYERS)
@pytest.mark.parametrize("name", list(PRECEDENCE))
def test_highest_given_layer_wins(tmp_path: Path, name: str, top: str) -> None:
    """The `top` layer and every layer below it are given; `top` must win."""
    spec = SPECS[name]
    (cli_raw, cli_value), (env_raw, env_value), (yaml_value, yaml_parsed), default = PRECEDENCE[
        name
    ]
    given = LAYERS[LAYERS.index(top) :]
    config = resolve(
        tmp_path,
        cli={name: cli_raw} if "cli" in given else None,
        env={spec.env: env_raw} if "env" in given else None,
        document={spec.yaml_key: yaml_value} if "yaml" in given else {},
    )
    expected = {"cli": cli_value, "env": env_value, "yaml": yaml_parsed, "default": default}[top]
    sources = {
        "cli": spec.flag,
        "env": f"env {spec.env}",
        "yaml": f"{config_file(tmp_path)} ({spec.yaml_key})",
        "default": "default",
    }
    assert getattr(config, name) == expected
    assert config.sources[name] == sources[top]


@pytest.mark.parametrize(
    ("layer", "expected_source"),
    [
        ({"cli": {"kv_bits": "unset"}}, "--kv-bits"),
        ({"cli": {"kv_bits": "UNSET"}}, "--kv-bits"),
        ({"env": {"MACPROVIDER_KV_BITS": "unset"}}, "env MACPROVIDER_KV_BITS"),
        ({"document": {"kv_bits": "unset"}}, "{path} (kv_bits)"),
        ({"document": "kv_bits: null\n"}, "{path} (kv_bits)"),
        ({"document": "kv_bits:\n"}, "{path} (kv_bits)"),
    ],
)
def test_unset_kv_bits_from_any_source_means_unquantized(
    tmp_path: Path, layer: dict[str, object], expected_source: str
) -> None:
    # YAML 8 sits below every layer tried, so an `unset` above it must override it.
    below = {} if "document" in layer else {"document": {"kv_bits": 8}}
    config = resolve(tmp_path, **{**below, **layer})  # type: ignore[arg-type]
    assert config.kv_bits is None
    assert config.sources["kv_bits"] == expected_source.format(path=config_file(tmp_path))


@pytest.mark.parametrize(
    ("layer", "limit"),
    [
        ({"cli": {"memory_limit_gb": "0.05"}}, 0.05),
        ({"cli": {"memory_limit_gb": ".5"}}, 0.5),
        ({"cli": {"memory_limit_gb": "2."}}, 2.0),
        ({"cli": {"memory_limit_gb": "+1"}}, 1.0),
        ({"env": {"MACPROVIDER_MEMORY_LIMIT_GB": " 16 "}}, 16.0),
        ({"document": {"memory_limit_gb": 16}}, 16.0),
        ({"document": {"memory_limit_gb": 0.05}}, 0.05),
        ({"cli": {"memory_limit_gb": "unset"}}, None),
        ({"env": {"MACPROVIDER_MEMORY_LIMIT_GB": "UNSET"}}, None),
        ({"document": {"memory_limit_gb": "unset"}}, None),
    ],
)
def test_memory_limit_reads_decimal_gb_or_unset(
    tmp_path: Path, layer: dict[str, object], limit: float | None
) -> None:
    # YAML 8 sits below the CLI and env layers tried, so their value must override it.
    below = {} if "document" in layer else {"document": {"memory_limit_gb": 8}}
    config = resolve(tmp_path, **{**below, **layer})  # type: ignore[arg-type]
    assert config.memory_limit_gb == limit


def test_memory_limit_too_large_for_a_float_is_invalid(tmp_path: Path) -> None:
    message = config_error(tmp_path, cli={"memory_limit_gb": "9" * 400})
    assert message.startswith("invalid memory_limit_gb '999")
    assert message.endswith(
        "must be a positive number of GB (1 GB = 10^9 bytes), e.g. 0.5 or 16, or unset for no limit"
    )


def test_yaml_null_of_an_ordinary_knob_reads_as_not_set(tmp_path: Path) -> None:
    config = resolve(tmp_path, document="port: null\nmax_context_override:\n")
    assert (config.port, config.sources["port"]) == (18080, "default")
    assert (config.max_context, config.sources["max_context"]) == (50_000, "default")


def test_sources_name_every_knob_and_the_config_file(tmp_path: Path) -> None:
    config = resolve(tmp_path)
    assert set(config.sources) == {*SPECS, *YAML_ONLY, CONFIG_OPTION.name}


def test_cli_keys_that_are_not_knobs_are_ignored(tmp_path: Path) -> None:
    assert resolve(tmp_path, cli={"no_join": "1", "verbose": None}).port == 18080


def test_resolved_config_is_immutable_and_keeps_secrets_out_of_repr(tmp_path: Path) -> None:
    config = resolve(tmp_path, cli={"api_key": "k-secret"}, document={"provider_token": "t-tok"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.sources["port"] = "x"  # type: ignore[index]
    assert "k-secret" not in repr(config) and "t-tok" not in repr(config)


# --- defaults by RAM ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ram_bytes", "context"),
    [
        (0, 20_000),
        (4 * GIB, 20_000),
        (8 * GIB, 20_000),
        (8 * GIB + 1, 50_000),
        (16 * GIB, 50_000),
        (16 * GIB + 1, 120_000),
        (32 * GIB, 120_000),
        (32 * GIB + 1, 200_000),
        (192 * GIB, 200_000),
    ],
)
def test_default_max_context_by_ram_tier(tmp_path: Path, ram_bytes: int, context: int) -> None:
    assert default_max_context(ram_bytes) == context
    config = resolve(tmp_path, ram_bytes=ram_bytes)
    assert (config.max_context, config.sources["max_context"]) == (context, "default")


# --- preflight: invalid values from the CLI and the environment ---------------------------------

BAD_TEXT = [
    ("kv_bits", "7"),
    ("kv_bits", "16"),
    ("kv_bits", "abc"),
    ("kv_bits", "4.0"),
    ("kv_bits", ""),
    ("max_context", "0"),
    ("max_context", "-1"),
    ("max_context", "abc"),
    ("max_context", "1.5"),
    ("max_context", "1_000"),
    ("max_context", ""),
    ("max_batch", "0"),
    ("max_batch", "abc"),
    ("max_batch", "1.5"),
    ("max_batch", ""),
    ("max_queue", "-1"),
    ("max_queue", "abc"),
    ("max_queue", "1.5"),
    ("max_queue", ""),
    ("memory_limit_gb", "0"),
    ("memory_limit_gb", "0.0"),
    ("memory_limit_gb", "-1"),
    ("memory_limit_gb", "abc"),
    ("memory_limit_gb", "nan"),
    ("memory_limit_gb", "inf"),
    ("memory_limit_gb", "1e3"),
    ("memory_limit_gb", "1_000"),
    ("memory_limit_gb", ""),
    ("port", "0"),
    ("port", "65536"),
    ("port", "-80"),
    ("port", "http"),
    ("port", ""),
    ("model", ""),
    ("model", "   "),
    ("host", ""),
    ("api_key", ""),
]


@pytest.mark.parametrize("source", ["cli", "env"])
@pytest.mark.parametrize(("name", "raw"), BAD_TEXT)
def test_invalid_text_value_names_value_and_source(
    tmp_path: Path, name: str, raw: str, source: str
) -> None:
    message = config_error(tmp_path, **text_layer(source, name, raw))
    assert message.startswith(f"invalid {name} {raw!r} from {text_source(source, name)}: must ")


def test_kv_bits_error_states_the_allowed_values(tmp_path: Path) -> None:
    message = config_error(tmp_path, cli={"kv_bits": "7"})
    assert message.startswith("invalid kv_bits '7' from --kv-bits: must be 4 or 8")


def test_invalid_value_wins_over_nothing_below_it(tmp_path: Path) -> None:
    """A bad CLI value fails even though the env and YAML hold good ones: no silent fallback."""
    message = config_error(
        tmp_path,
        cli={"max_batch": "0"},
        env={"MACPROVIDER_MAX_CONCURRENCY_OVERRIDE": "2"},
        document={"max_concurrency_override": 3},
    )
    assert message.startswith("invalid max_batch '0' from --max-batch")


# --- preflight: invalid values from the YAML file ----------------------------------------------

BAD_YAML = [
    ("kv_bits", "eight"),
    ("kv_bits", 7),
    ("kv_bits", "8"),
    ("kv_bits", True),
    ("kv_bits", 4.0),
    ("max_context_override", 1.5),
    ("max_context_override", 0),
    ("max_context_override", True),
    ("max_context_override", "1000"),
    ("max_concurrency_override", True),
    ("max_concurrency_override", 0),
    ("max_concurrency_override", [2]),
    ("max_queue", -1),
    ("max_queue", False),
    ("memory_limit_gb", 0),
    ("memory_limit_gb", -0.5),
    ("memory_limit_gb", float("nan")),
    ("memory_limit_gb", float("inf")),
    ("memory_limit_gb", True),
    ("memory_limit_gb", "16"),
    ("port", [1]),
    ("port", 0),
    ("port", 65536),
    ("port", "8080"),
    ("port", 8080.0),
    ("model", 5),
    ("model", ""),
    ("model", ["a", "b"]),
    ("host", 127),
    ("host", ""),
    ("coordinator_endpoint", 5),
    ("coordinator_endpoint", {"url": "x"}),
]
NAME_OF_YAML_KEY = {spec.yaml_key: spec.name for spec in KNOBS} | {key: key for key in YAML_ONLY}


@pytest.mark.parametrize(("key", "value"), BAD_YAML)
def test_invalid_yaml_value_names_value_and_source(tmp_path: Path, key: str, value: object) -> None:
    message = config_error(tmp_path, document={key: value})
    name, path = NAME_OF_YAML_KEY[key], config_file(tmp_path)
    assert message.startswith(f"invalid {name} {value!r} from {path} ({key}): must ")


@pytest.mark.parametrize(("key", "value"), [("max_concurrency_override", True), ("model", 5)])
def test_yaml_wrong_type_error_says_which_type_it_got(
    tmp_path: Path, key: str, value: object
) -> None:
    message = config_error(tmp_path, document={key: value})
    assert message.endswith(", not a boolean" if value is True else ", not an integer")


@pytest.mark.parametrize(("key", "value"), [("api_key", 12345), ("provider_token", 98765)])
def test_invalid_secret_is_not_echoed(tmp_path: Path, key: str, value: int) -> None:
    message = config_error(tmp_path, document={key: value})
    assert f"from {config_file(tmp_path)} ({key})" in message
    assert "<hidden>" in message and str(value) not in message


def test_long_bad_value_is_clipped(tmp_path: Path) -> None:
    message = config_error(tmp_path, document={"model": list(range(1000))})
    assert "..." in message and len(message) < 300


# --- the YAML file ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected", "source"),
    [
        (
            {"XDG_CONFIG_HOME": "{tmp}/cfg", "HOME": "{tmp}/home"},
            "{tmp}/cfg/macprovider/config.yaml",
            "env XDG_CONFIG_HOME",
        ),
        (
            {"XDG_CONFIG_HOME": "", "HOME": "{tmp}/home"},
            "{tmp}/home/.config/macprovider/config.yaml",
            "default",
        ),
        (
            {"XDG_CONFIG_HOME": "relative/cfg", "HOME": "{tmp}/home"},
            "{tmp}/home/.config/macprovider/config.yaml",
            "default",
        ),
        ({"HOME": "{tmp}/home"}, "{tmp}/home/.config/macprovider/config.yaml", "default"),
        (
            {"MACPROVIDER_CONFIG": "{tmp}/named.yaml", "XDG_CONFIG_HOME": "{tmp}/cfg"},
            "{tmp}/named.yaml",
            "env MACPROVIDER_CONFIG",
        ),
    ],
)
def test_config_file_location(
    tmp_path: Path, env: dict[str, str], expected: str, source: str
) -> None:
    path = write_yaml(Path(expected.format(tmp=tmp_path)), {"port": 2345})
    config = resolve_serve_config(
        {}, {k: v.format(tmp=tmp_path) for k, v in env.items()}, ram_bytes=RAM, require_model=False
    )
    assert (config.config_path, config.sources["config"]) == (path, source)
    assert (config.port, config.sources["port"]) == (2345, f"{path} (port)")


def test_config_flag_beats_config_env(tmp_path: Path) -> None:
    flagged = write_yaml(tmp_path / "flag.yaml", {"port": 1111})
    named = write_yaml(tmp_path / "env.yaml", {"port": 2222})
    config = resolve(tmp_path, cli={"config": str(flagged)}, env={"MACPROVIDER_CONFIG": str(named)})
    assert (config.port, config.sources["config"]) == (1111, "--config")


def test_missing_file_at_default_location_is_an_empty_config(tmp_path: Path) -> None:
    config = resolve(tmp_path)
    assert not config.config_path.exists()
    assert all(config.sources[name] == "default" for name in SPECS)
    assert (config.coordinator_endpoint, config.provider_token) == (None, None)


@pytest.mark.parametrize(
    ("layer", "source"),
    [
        ({"cli": {"config": "{tmp}/absent.yaml"}}, "--config"),
        ({"env": {"MACPROVIDER_CONFIG": "{tmp}/absent.yaml"}}, "env MACPROVIDER_CONFIG"),
    ],
)
def test_missing_file_named_explicitly_is_an_error(
    tmp_path: Path, layer: dict[str, dict[str, str]], source: str
) -> None:
    filled = {
        where: {k: v.format(tmp=tmp_path) for k, v in given.items()}
        for where, given in layer.items()
    }
    message = config_error(tmp_path, **filled)
    assert message == f"config file {tmp_path}/absent.yaml from {source} does not exist"


@pytest.mark.parametrize(
    "layer", [{"cli": {"config": ""}}, {"env": {"MACPROVIDER_CONFIG": ""}}], ids=["cli", "env"]
)
def test_empty_config_path_is_an_error(tmp_path: Path, layer: dict[str, object]) -> None:
    assert config_error(tmp_path, **layer).startswith("invalid config '' from ")


@pytest.mark.parametrize(
    "text",
    [
        "port: [1\n",
        "a: b: c\n",
        "model: x\n\tport: 1\n",
        "when: 2024-13-01\n",
        "? [1, 2]\n: unhashable key\n",
        '"unterminated\n',
    ],
)
def test_malformed_yaml_is_a_one_line_error_naming_the_file(tmp_path: Path, text: str) -> None:
    path = write_yaml(config_file(tmp_path), text)
    message = config_error(tmp_path)
    assert message.startswith(f"malformed YAML in config file {path}: ")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config_file(path)


def test_undecodable_yaml_is_malformed(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"port: \xff\xfe\n")
    assert config_error(tmp_path).startswith(f"malformed YAML in config file {path}: ")


@pytest.mark.parametrize(
    ("text", "kind"),
    [("- a\n- b\n", "a list"), ("just text\n", "a string"), ("42\n", "an integer")],
)
def test_yaml_whose_top_level_is_not_a_mapping_is_refused(
    tmp_path: Path, text: str, kind: str
) -> None:
    path = write_yaml(config_file(tmp_path), text)
    assert (
        config_error(tmp_path)
        == f"config file {path} must hold a mapping at its top level, not {kind}"
    )


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_yaml_is_an_empty_config(tmp_path: Path, text: str) -> None:
    path = write_yaml(config_file(tmp_path), text)
    assert load_config_file(path) == {}
    assert resolve(tmp_path).sources["port"] == "default"


def test_unreadable_config_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "a-directory.yaml"
    folder.mkdir()
    message = config_error(tmp_path, cli={"config": str(folder)})
    assert message.startswith(f"cannot read config file {folder} from --config: ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_config_without_read_permission_names_the_file(tmp_path: Path) -> None:
    path = write_yaml(config_file(tmp_path), {"port": 1})
    path.chmod(0)
    assert config_error(tmp_path) == f"cannot read config file {path}: Permission denied"


def test_unknown_keys_are_ignored(tmp_path: Path) -> None:
    text = "theme: dark\nother_tool: {nested: [1, 2], port: x}\n1: numeric key\nkv_bits: 8\n"
    config = resolve(tmp_path, document=text)
    assert config.kv_bits == 8
    assert load_config_file(config_file(tmp_path)) == {
        "theme": "dark",
        "other_tool": {"nested": [1, 2], "port": "x"},
        "kv_bits": 8,
    }


def test_yaml_only_keys_are_carried_through(tmp_path: Path) -> None:
    document = {"coordinator_endpoint": "wss://pool.example/join", "provider_token": "tok-1"}
    config = resolve(tmp_path, document=document)
    assert (config.coordinator_endpoint, config.provider_token) == (
        "wss://pool.example/join",
        "tok-1",
    )
    assert config.sources["provider_token"] == f"{config_file(tmp_path)} (provider_token)"


def test_load_config_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "absent.yaml")
    assert load_config_file(tmp_path / "absent.yaml", missing_ok=True) == {}


# --- model and bind preflight -------------------------------------------------------------------


def test_missing_model_says_how_to_set_it(tmp_path: Path) -> None:
    message = config_error(tmp_path, require_model=True)
    assert "--model" in message and "MACPROVIDER_MODEL" in message
    assert f"model: in {config_file(tmp_path)}" in message


def test_model_is_optional_when_not_required(tmp_path: Path) -> None:
    assert resolve(tmp_path, require_model=False).model is None
    assert resolve(tmp_path, cli={"model": "org/m"}, require_model=True).model == "org/m"


NON_LOOPBACK = ["0.0.0.0", "192.168.1.5", "10.0.0.1", "::", "example.com", "pool.local"]


@pytest.mark.parametrize("source", ["cli", "env", "yaml"])
@pytest.mark.parametrize("host", NON_LOOPBACK)
def test_non_loopback_host_without_api_key_is_refused(
    tmp_path: Path, host: str, source: str
) -> None:
    if source == "yaml":
        message = config_error(tmp_path, document={"host": host})
        named = f"{config_file(tmp_path)} (host)"
    else:
        message = config_error(tmp_path, **text_layer(source, "host", host))
        named = text_source(source, "host")
    assert message.startswith(f"refusing host {host!r} from {named} without an API key")
    assert "--api-key" in message and "MACPROVIDER_API_KEY" in message


@pytest.mark.parametrize(
    "key_layer",
    [
        {"cli": {"api_key": "k"}},
        {"env": {"MACPROVIDER_API_KEY": "k"}},
        {"document": {"api_key": "k"}},
    ],
    ids=["cli", "env", "yaml"],
)
@pytest.mark.parametrize("host", NON_LOOPBACK)
def test_non_loopback_host_with_api_key_is_accepted(
    tmp_path: Path, host: str, key_layer: dict[str, dict[str, str]]
) -> None:
    cli = {"host": host, **key_layer.get("cli", {})}
    config = resolve(tmp_path, **{**key_layer, "cli": cli})  # type: ignore[arg-type]
    assert (config.host, config.api_key) == (host, "k")


@pytest.mark.parametrize(
    "host", ["localhost", "LocalHost", "127.0.0.1", "127.0.0.53", "::1", "[::1]"]
)
def test_loopback_host_needs_no_api_key(tmp_path: Path, host: str) -> None:
    config = resolve(tmp_path, cli={"host": host})
    assert (config.host, config.api_key) == (host, None)
