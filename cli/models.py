"""`macprovider-supervise models`: get a model onto this machine and check it.

`import` turns a GGUF file into an mlx-lm folder in the models folder; `list`, `verify` and
`pull` see and fetch what `serve` and autotune can use. Each subcommand imports its machinery
when it runs, so `--help` stays quick.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from macprovider.cli.models_import import import_command
from macprovider.cli.models_options import models_dir_option


@click.group()
def models() -> None:
    """Import, list, verify and pull the models serve and autotune use."""


models.add_command(import_command, "import")


@models.command("list")
@click.option("--json", "json_output", is_flag=True, help="A JSON list of objects, null: unknown.")
@models_dir_option
def list_command(json_output: bool, models_dir: Path | None) -> int:
    """Every model in the Hugging Face cache and the models folder.

    For each: where it is, its architecture, parameter count (a quantized model's unpacked),
    size on disk, quantization, and whether the memory estimate at the default serving context
    (batch 1) fits this machine's RAM. A model whose files cannot be read, or whose HF-cache
    snapshot lacks a file, is listed with the problem; `models verify` checks one fully. Exit 0,
    64 when MACPROVIDER_MODELS_DIR is not an absolute path.
    """
    from macprovider.cli.models_list import (
        as_json,
        as_table,
        hf_cache_dir,
        list_models,
        ram_bytes,
    )
    from macprovider.server.places import models_dir as default_models_dir

    folder = (models_dir, "--models-dir") if models_dir else default_models_dir(os.environ)
    listing = list_models(hf_cache_dir(), folder, ram_bytes())
    click.echo(as_json(listing) if json_output else as_table(listing))
    return 0


@models.command()
@click.argument("model_id", metavar="ID")
def verify(model_id: str) -> int:
    """Check a model's files as autotune's pre-warm does.

    ID is found as serve finds it: a folder, a name in the models folder, or a repo id in the
    HF cache. Every weight file's header must parse and cover its data, config.json and
    tokenizer.json must be there, and every file the HF cache recorded a hash for must match
    it. Exit 0 ok, 65 damaged (naming the file), 66 not found on this machine (naming the
    folders searched), 64 MACPROVIDER_MODELS_DIR is not an absolute path.
    """
    from macprovider.cli.models_verify import verify_folder
    from macprovider.server.models import resolve_model_path

    folder = resolve_model_path(model_id, require_config=False)
    click.echo(verify_folder(folder, model_id))
    return 0


@models.command()
@click.argument("repo_id", metavar="ID")
@click.option("--revision", default=None, help="A branch, tag or commit. [default: main]")
def pull(repo_id: str, revision: str | None) -> int:
    """Download a Hugging Face repo into the HF cache, then verify it.

    huggingface_hub does the transfer and honours HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE and
    HF_HUB_CACHE; files already in the cache are not fetched again. Prints the snapshot folder
    on stdout. Exit 0 ok; 65 damaged download (naming the file, which is removed from the cache
    so that pulling again fetches it anew); 66 no such repo, revision or file, or access
    refused (a token is needed, or a gated repo's conditions accepted); 69 the Hub cannot be
    reached or answered a server error (or HF_HUB_OFFLINE is set and the cache lacks the
    model); 130 interrupted.
    """
    from macprovider.cli.models_pull import pull as pull_snapshot
    from macprovider.cli.models_pull import verify_pulled

    folder = pull_snapshot(repo_id, revision, progress=sys.stderr.isatty())
    click.echo(verify_pulled(folder, repo_id), err=True)
    click.echo(folder)
    return 0
