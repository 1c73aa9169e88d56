"""Pre-warm's typed errors. Their texts start with a fixed prefix, so a failure still sorts
into its class (actors/prewarm_classify.py) once it is only a line in a log or a run's notes."""

from __future__ import annotations

INTEGRITY_PREFIX = "pre-warm integrity failure"
TRANSIENT_PREFIX = "pre-warm transient failure"


def one_line(text: str) -> str:
    """`text` with every run of whitespace (newlines included) as one space."""
    return " ".join(text.split())


class PrewarmError(Exception):
    """Base of pre-warm's errors; `model` names the model it was about."""

    def __init__(self, message: str, model: str) -> None:
        super().__init__(one_line(message))
        self.model = model


class PrewarmIntegrityError(PrewarmError):
    """The model's files are incomplete or corrupt: the autotune run must abort."""

    def __init__(self, model: str, file: str, cause: str) -> None:
        super().__init__(f"{INTEGRITY_PREFIX}: {model}: {file}: {cause}", model)
        self.file = file
        self.cause = cause


class PrewarmTransientError(PrewarmError):
    """Fetching failed for a reason that may pass (network, disk full, gated repo)."""

    def __init__(self, model: str, cause: str) -> None:
        super().__init__(f"{TRANSIENT_PREFIX}: {model}: {cause}", model)
        self.cause = cause


class ModelNotCached(PrewarmError):
    """An HF repo id with no complete snapshot in the local cache: pre-warm must fetch it."""

    def __init__(self, model: str, detail: str) -> None:
        super().__init__(f"{model} is not in the local Hugging Face cache: {detail}", model)
