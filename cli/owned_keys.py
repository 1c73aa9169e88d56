"""The line-level rewrite of the four keys autotune owns in a YAML config: `model`,
`kv_bits`, `max_context_override` and `max_concurrency_override` (pure: text in, text out).

The rewrite is line-level on purpose, so every other line stays byte-identical (comments,
blank lines, order, quoting, line endings); PyYAML only parses, to find where the owned keys
sit, to validate the input and to check the output before anything is written.

Decisions:
- An owned key is rewritten in place; one that is missing is appended at the end. A value on
  the key's line is replaced alone (a trailing comment stays); a value spanning several lines
  (block scalar, indented block, value on the next line) becomes one `key: value` line, and
  comments inside those lines go with the old value. `kv_bits` unset removes its line(s).
- A value already equal to the recommended one (same parsed value and type) is left as written,
  so `model: 'x'  # mine` survives an apply of `x`.
- Quoted keys (`"model": x`) are handled: the key keeps its spelling. Refused: invalid YAML, a
  top level that is not a block mapping, an owned key written twice, through an alias or with
  an anchor or a tag, or written as an explicit `? key`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    Event,
    MappingStartEvent,
    NodeEvent,
    ScalarEvent,
)

from macprovider.cli.errors import ApplyError
from macprovider.server.config import (
    KV_BITS,
    MAX_BATCH,
    MAX_CONTEXT,
    MODEL,
    KnobSpec,
    yaml_problem,
)

__all__ = ["OWNED_KEYS", "OwnedValue", "cannot_apply", "rewrite_owned_keys"]

# The knobs autotune owns, by YAML key, in the order missing ones are appended.
_OWNED: dict[str, KnobSpec[Any]] = {
    spec.yaml_key: spec for spec in (MODEL, KV_BITS, MAX_CONTEXT, MAX_BATCH)
}
OWNED_KEYS: tuple[str, ...] = tuple(_OWNED)

OwnedValue = str | int | None

# PyYAML's line breaks ("\r\n" counts as one); splitlines() knows more, so it is not used.
_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
_BLANK = " \t\r\n\x85\u2028\u2029"
_COLON = re.compile(r"[ \t]*:")  # between a key and its value, on the key's line
# A model id safe to write unquoted: no indicator first, no `:`, `#` or space anywhere. Words
# YAML resolves to something else (`true`, `1e3`, `2024-01-01`) are caught by a round trip.
_PLAIN = re.compile(r"[A-Za-z0-9_./~][A-Za-z0-9_./~@+=-]*")


def rewrite_owned_keys(text: str, values: Mapping[str, OwnedValue], *, source: str) -> str:
    """`text` with the owned keys set to `values` (kv_bits None: removed), all else unchanged.

    Raises ApplyError, naming `source`, when the text cannot be rewritten safely or the result
    does not parse back to exactly the old other keys and the new owned values.
    """
    _check_values(values, source)
    before = _load(text, source)
    entries = _owned_entries(text, source)
    edits: list[tuple[int, int, str]] = []
    for key, entry in entries.items():
        value = values[key]
        if value is None:
            edits.append(_removal(text, entry))
        elif not _holds(before, key, value):
            edits.append(_replacement(text, entry, _yaml_value(value)))
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    missing = [(key, values[key]) for key in OWNED_KEYS if key not in entries]
    text = _append(text, [(key, _yaml_value(value)) for key, value in missing if value is not None])
    _verify(before, text, values, source)
    return text


def cannot_apply(source: str, reason: str) -> ApplyError:
    """The ApplyError for `source` (a config's path): nothing was written."""
    return ApplyError(f"cannot apply to {source}: {reason}")


def _check_values(values: Mapping[str, OwnedValue], source: str) -> None:
    # Never write a value the resolver would refuse, or read back as something else.
    if set(values) != set(OWNED_KEYS):
        raise cannot_apply(source, f"values must name exactly {', '.join(OWNED_KEYS)}")
    for key, spec in _OWNED.items():
        value = values[key]
        try:
            same = spec.from_yaml(value) == value
        except ValueError as rule:
            raise cannot_apply(source, f"{key} {value!r} {rule}") from None
        if not same:
            raise cannot_apply(source, f"{key} {value!r} would not read back as itself")


def _load(text: str, source: str, *, rewritten: bool = False) -> dict[Any, Any]:
    what = "the rewritten config would not be" if rewritten else "not"
    try:
        document = yaml.safe_load(text)
    # ValueError: PyYAML builds dates itself, and `2024-13-01` fails in datetime.
    except (yaml.YAMLError, ValueError) as err:
        raise cannot_apply(source, f"{what} valid YAML: {yaml_problem(err)}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise cannot_apply(source, f"{what} a mapping at the top level")
    return document


def _holds(document: Mapping[Any, Any], key: str, value: OwnedValue) -> bool:
    # The type check keeps `true` from passing for 1, 8.0 for 8 and "4" for 4.
    return key in document and type(document[key]) is type(value) and document[key] == value


def _yaml_value(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    if _PLAIN.fullmatch(value) and _reads_plain(value):
        return value
    return _double_quoted(value)


def _reads_plain(value: str) -> bool:
    try:
        loaded: object = yaml.safe_load(f"k: {value}")
    except (yaml.YAMLError, ValueError):  # `2024-13-01` reads as a date that datetime refuses
        return False
    return loaded == {"k": value}


def _double_quoted(value: str) -> str:
    """A YAML double-quoted scalar: printable characters as they are, the rest escaped (line
    breaks would fold, a BOM or a control character would not survive the reader)."""
    out = []
    for char in value:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F or (code >= 0xA0 and _printable_beyond_ascii(code)):
            out.append(char)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def _printable_beyond_ascii(code: int) -> bool:
    return not (0xD800 <= code <= 0xDFFF or code in (0x2028, 0x2029, 0xFEFF, 0xFFFE, 0xFFFF))


# --- where the owned keys are -------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """An owned top-level key as written: character offsets into the text."""

    line_start: int  # the start of the key's line
    colon_end: int  # just past the `:` after the key
    value_start: int  # the value's first character (anchor or tag included)
    value_end: int  # past its last character, trailing blanks excluded


def _span(event: Event) -> tuple[int, int]:
    # The pure-Python parser always sets both marks; the stubs also allow the C parser's None.
    assert event.start_mark is not None and event.end_mark is not None
    return event.start_mark.index, event.end_mark.index


def _node_end(events: list[Event], i: int) -> int:
    """The index just past the node whose first event is `events[i]`."""
    depth = 0
    for j in range(i, len(events)):
        if isinstance(events[j], CollectionStartEvent):
            depth += 1
        elif isinstance(events[j], CollectionEndEvent):
            depth -= 1
        if depth == 0:
            return j + 1
    raise AssertionError("unbalanced YAML event stream")


def _owned_entries(text: str, source: str) -> dict[str, _Entry]:
    """The owned keys of the top-level mapping; refuses any it cannot rewrite line by line.

    `text` must already have loaded as a mapping (or nothing) with `_load`.
    """
    events = list(yaml.parse(text, Loader=yaml.SafeLoader))
    # StreamStart, DocumentStart, the root node... (a file of comments has no document).
    root = events[2] if len(events) > 2 else None
    if not isinstance(root, MappingStartEvent):
        return {}
    if root.flow_style:
        raise cannot_apply(source, "the top-level mapping is in flow style ({...})")
    anchors: dict[str, str] = {}  # anchor name → scalar value, to see which key an alias names
    entries: dict[str, _Entry] = {}
    i = 3
    while isinstance(events[i], NodeEvent):
        value_at = _node_end(events, i)
        after = _node_end(events, value_at)
        key = events[i]
        name = anchors.get(key.anchor or "") if isinstance(key, AliasEvent) else None
        if isinstance(key, ScalarEvent):
            name = key.value
        if name in _OWNED:
            if name in entries:
                raise cannot_apply(source, f"{name} appears twice at the top level")
            _check_plain_node(events, i, value_at, after, name, source)
            entries[name] = _entry(text, events[i:after], value_at - i, name, source)
        anchors |= {
            e.anchor: e.value for e in events[i:after] if isinstance(e, ScalarEvent) and e.anchor
        }
        i = after
    return entries


def _check_plain_node(
    events: list[Event], key_at: int, value_at: int, after: int, name: str, source: str
) -> None:
    # Rewriting through an alias, an anchor others refer to, or a tag would change more than
    # the key, or something else than intended.
    key, value = events[key_at], events[value_at]
    if isinstance(key, AliasEvent) or isinstance(value, AliasEvent):
        raise cannot_apply(source, f"{name} is written through an alias (*)")
    if any(isinstance(e, NodeEvent) and e.anchor for e in events[key_at:after]):
        raise cannot_apply(source, f"{name} carries an anchor (&)")
    for event in (key, value):
        if isinstance(event, ScalarEvent | CollectionStartEvent) and event.tag is not None:
            raise cannot_apply(source, f"{name} carries a tag (!)")


def _entry(text: str, events: list[Event], value_offset: int, name: str, source: str) -> _Entry:
    key_start, key_end = _span(events[0])
    line_start = _line_start(text, key_start)
    colon = _COLON.match(text, key_end)
    # Only indentation may precede the key (a BOM too, on the first line).
    if text[line_start:key_start].strip(" \t\ufeff") or colon is None:
        raise cannot_apply(source, f"cannot locate {name} safely (write it as `{name}: value`)")
    value_start = _span(events[value_offset])[0]
    # Block collections end where the next token starts: only events with a width count.
    ends = [end for start, end in map(_span, events[value_offset:]) if end > start]
    value_end = len(text[: max(ends, default=value_start)].rstrip(_BLANK))
    return _Entry(line_start, colon.end(), value_start, max(value_start, value_end))


def _line_start(text: str, index: int) -> int:
    return max((m.end() for m in _BREAK.finditer(text, 0, index)), default=0)


def _on_one_line(text: str, entry: _Entry) -> bool:
    return _BREAK.search(text, entry.line_start, entry.value_end) is None


# --- the edits ------------------------------------------------------------------------------------


def _replacement(text: str, entry: _Entry, rendered: str) -> tuple[int, int, str]:
    if _on_one_line(text, entry):
        # Only the value's characters change: spacing, a trailing comment, the line break stay.
        space = "" if text[entry.value_start - 1] in " \t" else " "
        return entry.value_start, entry.value_end, space + rendered
    line_break = _BREAK.search(text, entry.value_end - 1)
    end = line_break.start() if line_break else len(text)
    return entry.colon_end, end, " " + rendered


def _removal(text: str, entry: _Entry) -> tuple[int, int, str]:
    last = max(entry.value_end, entry.colon_end) - 1
    line_break = _BREAK.search(text, last)
    if line_break:
        return entry.line_start, line_break.end(), ""
    # The last line, without a line break: drop the one before it so the file still has none.
    previous = list(_BREAK.finditer(text, 0, entry.line_start))
    return (previous[-1].start() if previous else 0), len(text), ""


def _append(text: str, lines: list[tuple[str, str]]) -> str:
    if not lines:
        return text
    first_break = _BREAK.search(text)
    eol = first_break.group() if first_break else "\n"
    if text and not _BREAK.fullmatch(text[-1]):
        text += eol
    return text + "".join(f"{key}: {value}{eol}" for key, value in lines)


def _verify(
    before: Mapping[Any, Any], text: str, values: Mapping[str, OwnedValue], source: str
) -> None:
    """Refuses unless `text` parses to `before`'s other keys and exactly the new owned values."""
    after = _load(text, source, rewritten=True)
    _owned_entries(text, source)  # the next apply must be able to rewrite it too
    for key in (before.keys() | after.keys()) - set(OWNED_KEYS):
        # repr: YAML's .nan is unequal to itself, and aliases can build recursive lists.
        if key not in before or key not in after or repr(before[key]) != repr(after[key]):
            raise cannot_apply(source, f"the rewrite would change {key!r}; nothing written")
    for key in OWNED_KEYS:
        want = values[key]
        right = key not in after if want is None else _holds(after, key, want)
        if not right:
            got = repr(after[key]) if key in after else "absent"
            raise cannot_apply(source, f"{key} would read {got} after the rewrite; nothing written")
