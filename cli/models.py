"""`macprovider-supervise models`: get a model onto this machine and check it.

`import` turns a GGUF file into an mlx-lm folder in the models folder; `list`, `verify` and
`pull` see and fetch what `serve` and autotune can use. Each subcommand imports its machinery
when it runs, so `--help` stays quick.
"""

from __future__ import annotations

import click

from macprovider.cli.models_import import import_command


@click.group()
def models() -> None:
    """Import, list, verify and pull the models serve and autotune use."""


models.add_command(import_command, "import")
