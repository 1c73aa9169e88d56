"""How each knob's value is read and checked, from text (CLI, environment) and from YAML.

Text arrives raw, so a bad `--kv-bits 7` and a bad `MACPROVIDER_KV_BITS=7` fail alike; YAML
values arrive already typed, so a YAML `true` or `1.5` must be refused where text would have
been parsed. A failed check raises `KnobValueError` stating the rule; the resolver adds the
value and where it came from.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = [
    "GB",
    "GIB",
    "UNSET_TOKEN",
    "IntRange",
    "KnobValueError",
    "gb_from_text",
    "gb_from_yaml",
    "kind_of",
    "kv_bits_from_text",
    "kv_bits_from_yaml",
    "text_from_text",
    "text_from_yaml",
]

GIB = 1 << 30
# The memory limit's unit: SI, so a limit in GB reads as bytes by moving the decimal point.
# RAM comes in GiB: a "16 GB" Mac has 16 GiB, 17.18 GB.
GB = 1_000_000_000
# The word for None where None is one of a knob's values (an unquantized cache, no limit).
UNSET_TOKEN = "unset"


class KnobValueError(ValueError):
    """A value broke its knob's rule; the message states the rule, the caller adds value/source."""


def kind_of(value: object) -> str:
    """What a YAML value is, in words, for an error message (`an integer`, `a mapping`)."""
    names = {"bool": "a boolean", "int": "an integer", "float": "a float", "str": "a string"}
    names |= {"list": "a list", "dict": "a mapping", "NoneType": "null"}
    name = type(value).__name__
    return names.get(name, f"a {name}")


@dataclass(frozen=True)
class IntRange:
    """An integer knob: decimal digits from text, a real int (never a bool) from YAML."""

    low: int
    high: int | None = None

    @property
    def rule(self) -> str:
        if self.high is None:
            return f"must be an integer ≥ {self.low}"
        return f"must be an integer from {self.low} to {self.high}"

    def from_text(self, raw: str) -> int:
        # int() alone would also take "1_000" and non-ASCII digits; an operator's typo should fail.
        text = raw.strip()
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            raise KnobValueError(self.rule)
        return self._in_range(int(text))

    def from_yaml(self, value: object) -> int:
        # bool is a subclass of int: `max_concurrency_override: true` must not read as 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise KnobValueError(f"{self.rule}, not {kind_of(value)}")
        return self._in_range(value)

    def _in_range(self, number: int) -> int:
        if number < self.low or (self.high is not None and number > self.high):
            raise KnobValueError(self.rule)
        return number


_KV_BITS_RULE = f"must be 4 or 8, or {UNSET_TOKEN} for an unquantized cache"


def kv_bits_from_text(raw: str) -> int | None:
    token = raw.strip().lower()
    if token == UNSET_TOKEN:
        return None
    if token in ("4", "8"):
        return int(token)
    raise KnobValueError(_KV_BITS_RULE)


def kv_bits_from_yaml(value: object) -> int | None:
    # YAML null and the `unset` token both mean "unquantized"; numbers must be real ints.
    if value is None or (isinstance(value, str) and value.strip().lower() == UNSET_TOKEN):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value in (4, 8):
        return value
    raise KnobValueError(_KV_BITS_RULE)


_MEMORY_LIMIT_RULE = (
    f"must be a positive number of GB (1 GB = 10^9 bytes), e.g. 0.5 or 16, or {UNSET_TOKEN} "
    "for no limit"
)


def gb_from_text(raw: str) -> float | None:
    token = raw.strip()
    if token.lower() == UNSET_TOKEN:
        return None
    # float() alone would also take "nan", "1e3", "1_0" and non-ASCII digits.
    if not re.fullmatch(r"\+?(?:[0-9]+\.?[0-9]*|\.[0-9]+)", token):
        raise KnobValueError(_MEMORY_LIMIT_RULE)
    return _positive_gb(float(token))


def gb_from_yaml(value: object) -> float | None:
    if isinstance(value, str) and value.strip().lower() == UNSET_TOKEN:
        return None
    # bool is a subclass of int: `memory_limit_gb: true` must not read as 1 GB.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise KnobValueError(f"{_MEMORY_LIMIT_RULE}, not {kind_of(value)}")
    return _positive_gb(float(value))


def _positive_gb(gb: float) -> float:
    # YAML's .nan and .inf are floats; a digit string too long for a float reads as inf.
    if not (math.isfinite(gb) and gb > 0):
        raise KnobValueError(_MEMORY_LIMIT_RULE)
    return gb


def text_from_text(raw: str) -> str:
    if not raw.strip():
        raise KnobValueError("must not be empty")
    return raw


def text_from_yaml(value: object) -> str:
    if not isinstance(value, str):
        raise KnobValueError(f"must be a string, not {kind_of(value)}")
    return text_from_text(value)
