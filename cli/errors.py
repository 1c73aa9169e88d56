"""The command line's own errors: one family, each mapped to an exit code in `exits`.

Kept apart from the modules that raise them so that `exits` (and so every command,
`serve` included) imports none of the autotune, report or service machinery.
"""

from __future__ import annotations


class CliError(Exception):
    """Base of the errors the command line raises on purpose; messages are one line."""


class ApplyError(CliError):
    """The config was not changed; the message is one line naming the file and the reason."""


class ReportHtmlError(CliError):
    """The page could not be written to the path given; one-line message."""


class ReportError(CliError):
    """The database has no such run (or none at all); one-line message."""


class ServiceError(CliError):
    """The service file cannot be written or removed; one line for the operator."""


class ModelImportError(CliError):
    """`models import` refused its input (not a GGUF, an architecture or tensor type it cannot
    convert); nothing was written. One line naming the file and what is wrong."""


class ModelFolderError(CliError):
    """`models import` cannot write its result: the destination exists or is not writable."""


class ModelIntegrityError(CliError):
    """`models verify` or `models pull` found a damaged model; the line names the file."""


class HubUnavailable(CliError):
    """`models pull` could not reach the Hub (offline, refused, timed out, or HF_HUB_OFFLINE)."""
