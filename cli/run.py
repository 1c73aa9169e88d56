"""`macprovider-supervise run`: keep the configured provider alive under the Supervisor."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil
import pykka

from macprovider.actors.keeper import KeeperProxy, Target, start_keeper
from macprovider.actors.messages import Knobs, RunOutcome
from macprovider.actors.provider import ProcessGroups, ProviderProxy, start_provider_actor
from macprovider.actors.runtime import supervise
from macprovider.actors.supervisor import ChildSpec, SupervisorProxy
from macprovider.server.config import resolve_serve_config
from macprovider.server.models import resolve_model_path


def default_state_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "macprovider"


def load_target(knobs: Mapping[str, str | None]) -> Target:
    """The resolver `serve` uses; an unknown model fails here, not as a crash loop."""
    config = resolve_serve_config(knobs, os.environ, ram_bytes=psutil.virtual_memory().total)
    assert config.model is not None  # require_model=True guarantees it
    resolve_model_path(config.model)
    knobs_ = Knobs(config.kv_bits, config.max_context, config.max_batch, config.memory_limit_gb)
    return Target(config.model, config.port, knobs_, config.config_path)


def run_provider(knobs: Mapping[str, str | None], state_dir: Path) -> RunOutcome:
    """Resolves the config (errors raise before anything starts), then supervises."""
    first = load_target(knobs)
    # The provider resolves host, API key and the rest itself, from the same config file.
    child_env = dict(os.environ)
    if first.config_path.exists():
        child_env["MACPROVIDER_CONFIG"] = str(first.config_path)
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
