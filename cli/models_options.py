"""Options the `models` subcommands share, declared once so their flags and help read alike."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import click

__all__ = ["models_dir_option"]

F = TypeVar("F", bound=Callable[..., Any])

_MODELS_DIR: Final = click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The models folder. [default: $MACPROVIDER_MODELS_DIR, else"
    " $XDG_DATA_HOME/macprovider/models, else ~/.local/share/macprovider/models]",
)


def models_dir_option(command: F) -> F:
    """`--models-dir PATH` (None when not given: `server.places.models_dir` decides)."""
    return _MODELS_DIR(command)
