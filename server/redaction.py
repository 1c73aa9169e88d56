"""Secrets kept out of what we print: the API key and the provider token, wherever a command
line carries them.

Command lines are logged, shown in refusals and handed back as "run this to start it again";
`ps` shows them to every user anyway, but our own output must not copy a key into log files
and terminals. What counts as a secret comes from the knob table (`KnobSpec.secret`, the YAML
keys never echoed), so a new secret knob is redacted without touching this module.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from macprovider.server.knobs import KNOBS, SECRET_YAML_ONLY_KEYS

__all__ = ["REDACTED", "redact_argv"]

REDACTED: Final = "<hidden>"  # what a ConfigError shows for a secret value, too

SECRET_FLAGS: Final = frozenset(spec.flag for spec in KNOBS if spec.secret)
_SECRET_KEYS: Final = frozenset(
    {*(spec.yaml_key for spec in KNOBS if spec.secret), *SECRET_YAML_ONLY_KEYS}
)
# Compared in lower case: YAML keys, their environment spellings and credential headers.
_SECRET_NAMES: Final = frozenset(
    {
        *_SECRET_KEYS,
        *(spec.env.lower() for spec in KNOBS if spec.secret),
        *(f"macprovider_{key}" for key in SECRET_YAML_ONLY_KEYS),
        "authorization",
        "proxy-authorization",
    }
)
# `NAME=value` (an environment assignment, `env NAME=… cmd`), `NAME: value` (a header given to
# curl -H, a YAML line); a header's scheme (`Bearer`) stays readable.
_ASSIGNMENT: Final = re.compile(
    r"(?P<name>[A-Za-z_][A-Za-z0-9_-]*)(?P<sep>\s*[=:]\s*)"
    r"(?P<scheme>(?:bearer|basic|token)\s+)?(?P<value>\S.*)",
    re.IGNORECASE | re.DOTALL,
)


def redact_argv(argv: Sequence[str]) -> tuple[str, ...]:
    """`argv` with every secret value replaced by REDACTED: `--api-key X`, `--api-key=X`,
    `MACPROVIDER_API_KEY=X`, `api_key: X`, `Authorization: Bearer X`. Flags, names and
    every other word are kept, so the line still says what was run."""
    redacted: list[str] = []
    value_follows = False
    for word in argv:
        if value_follows:
            redacted.append(REDACTED)
            value_follows = False
            continue
        value_follows = word in SECRET_FLAGS
        redacted.append(_redact_word(word))
    return tuple(redacted)


def _redact_word(word: str) -> str:
    flag, equals, _ = word.partition("=")
    if equals and flag in SECRET_FLAGS:
        return f"{flag}={REDACTED}"
    match = _ASSIGNMENT.fullmatch(word)
    if match is None or match["name"].lower() not in _SECRET_NAMES:
        return word
    return f"{match['name']}{match['sep']}{match['scheme'] or ''}{REDACTED}"
