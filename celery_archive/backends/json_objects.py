"""A JSON object a row made from Arrow columns, byte for byte what ``orjson.dumps`` writes for
the row's dict ({"name":value,...}: texts escaped as orjson escapes them, integers, null), built
column by column in Arrow instead of one dict and one dumps call a row."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pyarrow as pa
import pyarrow.compute as pc

# orjson's escapes: the two JSON requires, the short forms it has, \u00xx for the other controls
_SHORT = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}
_ESCAPES = {b: _SHORT.get(b, f"\\u{b:04x}") for b in range(0x20)} | {0x22: '\\"'}
_PLAIN = bytes(b for b in range(256) if b not in _ESCAPES and b != 0x5C)  # bytes that stay as they are


def _escaped(text: pa.Array) -> pa.Array:
    """Each text as the inside of its JSON string: only the escapes its bytes call for are
    made (most columns need none; one pass over their bytes tells)."""
    data = text.buffers()[2]
    found = set(data.to_pybytes().translate(None, _PLAIN)) if data is not None else set()
    if 0x5C in found:  # the backslash first: the escapes below add their own
        text = pc.replace_substring(text, "\\", "\\\\")
    for byte in sorted(found - {0x5C}):
        text = pc.replace_substring(text, chr(byte), _ESCAPES[byte])
    return text


def _parts(column: pa.Array) -> list[pa.Array | str]:
    """A column's part of the objects: its values as JSON text (null where null)."""
    t = column.type
    if pa.types.is_null(t):
        return ["null"]
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        text = _escaped(column.cast(pa.string()))
        if not column.null_count:
            return ['"', text, '"']  # the quotes join the names around them
        return [pc.fill_null(pc.binary_join_element_wise('"', text, '"', ""), "null")]
    if pa.types.is_integer(t):
        return [pc.fill_null(column.cast(pa.string()), "null")]
    raise TypeError(f"no JSON text for an Arrow {t} column")


def objects(names: Sequence[str], columns: Sequence[pa.Array]) -> pa.Array:
    """``orjson.dumps(dict(zip(names, row)))`` of each row, as binary; the columns are texts,
    integers or all null (TypeError for another type)."""
    if not names:
        raise ValueError("a JSON object of no column")
    parts: list[pa.Array | str] = []
    for i, (name, column) in enumerate(zip(names, columns)):
        parts += [("{" if i == 0 else ",") + orjson.dumps(name).decode() + ":", *_parts(column)]
    parts.append("}")
    merged: list[pa.Array | str] = []
    for part in parts:  # neighbouring texts as one
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        else:
            merged.append(part)
    if all(isinstance(p, str) for p in merged):
        return pa.repeat(pa.scalar("".join(map(str, merged)).encode()), len(columns[0]))
    out: pa.Array = pc.binary_join_element_wise(*merged, "").cast(pa.binary())
    return out
