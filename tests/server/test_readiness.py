"""Readiness: until the engine has loaded the model, the API answers 503 (in-process app)."""

from __future__ import annotations

from pathlib import Path

from macprovider.server.app import create_app
from macprovider.server.config import resolve_serve_config
from macprovider.server.metrics import Metrics
from macprovider.server.provider import Provider


def unstarted_provider(tmp_path: Path) -> Provider:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    config = resolve_serve_config({"model": str(tmp_path)}, env, ram_bytes=8 << 30)
    return Provider(config, tmp_path, Metrics())


async def test_models_and_generation_answer_503_until_loaded(tmp_path: Path) -> None:
    client = create_app(unstarted_provider(tmp_path)).test_client()
    models = await client.get("/v1/models")
    assert models.status_code == 503
    assert models.headers["Retry-After"] == "1"
    assert (await models.get_json())["error"]["code"] == "model_loading"
    chat = await client.post("/v1/chat/completions", json={"messages": [{"role": "user"}]})
    assert chat.status_code == 503
    health = await client.get("/health")
    assert (await health.get_json()) == {"status": "ok", "model_loaded": False}
