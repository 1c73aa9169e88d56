"""`models import FILE.gguf`: a GGUF file (llama.cpp, Ollama, LM Studio) as an mlx-lm folder."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("gguf_file", type=click.Path(dir_okay=False, path_type=Path))
def import_command(gguf_file: Path) -> int:
    """Convert a Llama-architecture GGUF file into an mlx-lm model folder."""
    raise click.ClickException(f"{gguf_file}: models import is not built yet")
