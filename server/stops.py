"""Text-level stop strings: what may be emitted now, and where generation must end.

A stop string can span several tokens, so text that could still turn out to be
the start of one is held back until the next token settles it.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopStringFilter:
    def __init__(self, stops: Sequence[str]):
        self._stops = tuple(s for s in stops if s)
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns the text safe to emit and whether a stop string was reached."""
        buffer = self._pending + text
        hits = [i for i in (buffer.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._pending = ""
            return buffer[: min(hits)], True
        held = self._held_suffix(buffer)
        self._pending = buffer[len(buffer) - held :]
        return buffer[: len(buffer) - held], False

    def flush(self) -> str:
        """The held-back text, once generation ended for another reason."""
        text, self._pending = self._pending, ""
        return text

    def _held_suffix(self, buffer: str) -> int:
        return max(
            (n for s in self._stops for n in range(1, len(s)) if buffer.endswith(s[:n])),
            default=0,
        )
