"""`macprovider-supervise run`'s inputs: the configured provider to keep alive, resolved
from the options; the tree that keeps it alive is `actors/trees.py`'s.

`run` takes every option `serve` takes and resolves them with serve's resolver, once per
(re)load. The provider then gets each resolved knob as a flag (`--host`, `--max-queue`, ...),
so it binds and queues exactly as resolved here, except the API key: a command line is
readable by every user on the machine (`ps`), so the key reaches the provider through its
environment (`MACPROVIDER_API_KEY`), never its argv. The supervisor's own requests to the
provider (readiness, health) carry the same key, at the host it binds (loopback for a
wildcard such as 0.0.0.0).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path

import psutil

from macprovider.actors.keeper import Target
from macprovider.actors.messages import Knobs, RunOutcome
from macprovider.actors.trees import keep_running
from macprovider.server import places
from macprovider.server.config import CONFIG_OPTION, KNOBS, resolve_model, resolve_serve_config


def default_state_dir(env: Mapping[str, str]) -> Path:
    return places.state_dir(env)


def load_target(knobs: Mapping[str, str | None]) -> Target:
    """The resolver `serve` uses; an unknown model fails here, not as a crash loop."""
    ram_bytes = psutil.virtual_memory().total
    config = resolve_serve_config(knobs, os.environ, ram_bytes=ram_bytes)
    # Fitted here, not only by the provider: the context is forwarded as a flag, where a
    # default would read as set.
    config, _ = resolve_model(config, ram_bytes=ram_bytes)
    assert config.model is not None  # require_model=True guarantees it
    # Knobs' fields are named after the knobs: every one of them is forwarded, as resolved.
    resolved = Knobs(**{f.name: getattr(config, f.name) for f in fields(Knobs)})
    return Target(config.model, config.port, resolved, config.config_path, config.api_key)


def _provider_env(knobs: Mapping[str, str | None], first: Target) -> dict[str, str]:
    """The providers' environment: this one, plus what the command line decided that a
    flag cannot carry."""
    env = dict(os.environ)
    # The provider still reads the config file itself, for what only the file holds.
    if first.config_path.exists():
        env[CONFIG_OPTION.env] = str(first.config_path)
    # A knob this command line sets to `unset` has no flag to forward (None is omitted), yet
    # must still outrank the environment and the file for the provider, as it did here.
    env.update(
        {
            spec.env: raw
            for spec in KNOBS
            if (raw := knobs.get(spec.name)) is not None and spec.from_text(raw) is None
        }
    )
    return env


def run_provider(knobs: Mapping[str, str | None], state_dir: Path) -> RunOutcome:
    """Resolves the config (errors raise before anything starts), then supervises the `run`
    tree (`actors/trees.py`) until it ends."""
    first = load_target(knobs)
    return keep_running(first, lambda: load_target(knobs), state_dir, _provider_env(knobs, first))
