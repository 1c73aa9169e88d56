"""`macprovider-supervise run`: keep the configured provider alive under the Supervisor.

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
from typing import Any

import psutil
import pykka

from macprovider.actors.keeper import KeeperProxy, Target, start_keeper
from macprovider.actors.messages import Knobs, RunOutcome
from macprovider.actors.provider import ProcessGroups, ProviderProxy, start_provider_actor
from macprovider.actors.runtime import supervise
from macprovider.actors.supervisor import ChildSpec, SupervisorProxy
from macprovider.server import places
from macprovider.server.config import CONFIG_OPTION, KNOBS, resolve_serve_config
from macprovider.server.models import resolve_model_path


def default_state_dir(env: Mapping[str, str]) -> Path:
    return places.state_dir(env)


def load_target(knobs: Mapping[str, str | None]) -> Target:
    """The resolver `serve` uses; an unknown model fails here, not as a crash loop."""
    config = resolve_serve_config(knobs, os.environ, ram_bytes=psutil.virtual_memory().total)
    assert config.model is not None  # require_model=True guarantees it
    resolve_model_path(config.model)
    # Knobs' fields are named after the knobs: every one of them is forwarded, as resolved.
    resolved = Knobs(**{f.name: getattr(config, f.name) for f in fields(Knobs)})
    return Target(config.model, config.port, resolved, config.config_path, config.api_key)


def run_provider(knobs: Mapping[str, str | None], state_dir: Path) -> RunOutcome:
    """Resolves the config (errors raise before anything starts), then supervises."""
    first = load_target(knobs)
    # The provider still reads the config file itself, for what only the file holds.
    child_env = dict(os.environ)
    if first.config_path.exists():
        child_env[CONFIG_OPTION.env] = str(first.config_path)
    # A knob this command line sets to `unset` has no flag to forward (None is omitted), yet
    # must still outrank the environment and the file for the provider, as it did here.
    child_env.update(
        {
            spec.env: raw
            for spec in KNOBS
            if (raw := knobs.get(spec.name)) is not None and spec.from_text(raw) is None
        }
    )
    groups = ProcessGroups()
    actors: dict[str, Any] = {}

    def provider_child(_: SupervisorProxy) -> pykka.ActorRef[Any]:
        proxy: ProviderProxy = start_provider_actor(state_dir, env=child_env, groups=groups)
        actors["provider"] = proxy
        return proxy.actor_ref

    def keeper_child(supervisor: SupervisorProxy) -> pykka.ActorRef[Any]:
        targets = iter([first])  # the first target is known good; later ones are reloads
        proxy = start_keeper(
            actors["provider"], supervisor, lambda: next(targets, None) or load_target(knobs)
        )
        actors["keeper"] = proxy
        return proxy.actor_ref

    def reload() -> None:
        keeper: KeeperProxy | None = actors.get("keeper")
        if keeper is not None:
            keeper.reload()

    children = [ChildSpec("provider", provider_child), ChildSpec("keeper", keeper_child)]
    return supervise(children, groups, on_reload=reload)
