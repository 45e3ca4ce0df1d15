"""Safe decoding of stored Celery payloads into a queryable JSON text copy.

Nothing here runs code from the backend: pickles go through :class:`RestrictedUnpickler`,
which admits plain data types only (and builtin exception classes, whose constructors have
no side effects). Anything else leaves the JSON copy null with a reason; the exact stored
bytes are archived either way, so decoding never loses data.
"""

from __future__ import annotations

import _compat_pickle
import base64
import builtins
import bz2
import datetime as dt
import decimal
import io
import json
import lzma
import pickle
import zlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

if TYPE_CHECKING:
    import pyarrow as pa

SERIALIZERS: dict[str, tuple[str, str]] = {
    "json": ("application/json", "utf-8"),
    "pickle": ("application/x-python-serialize", "binary"),
    "msgpack": ("application/x-msgpack", "binary"),
    "yaml": ("application/x-yaml", "utf-8"),
}
PICKLE_CONTENT_TYPE = SERIALIZERS["pickle"][0]
COMPRESSED_MAGIC = b"\x00celery-compressed\x00"  # Celery 5.7 result_compression header
_KOMBU_TYPES = frozenset({"datetime", "date", "time", "uuid", "decimal", "bytes"})
_SAFE_GLOBALS = frozenset(
    {("builtins", n) for n in ("set", "frozenset", "bytearray", "complex", "slice", "range")}
    | {("datetime", n) for n in ("datetime", "date", "time", "timedelta", "timezone")}
    | {("decimal", "Decimal"), ("uuid", "UUID"), ("uuid", "SafeUUID")}
    | {("collections", "OrderedDict"), ("_codecs", "encode"), ("builtins", "object")}
    # protocols 0-1 rebuild objects with copyreg._reconstructor(cls, base, state); cls and
    # base are themselves looked up here, so only the classes above can be made
    | {("copyreg", "_reconstructor")}
)


class UnsafePayload(Exception):
    """A payload that would need more than plain data to load."""


class RestrictedUnpickler(pickle.Unpickler):
    """Loads plain data only: containers, numbers, text, bytes, dates, UUIDs, decimals.

    Any other global (a function, a class from an application or a library) is refused
    before it is looked up, so a hostile pickle's ``__reduce__`` never runs.
    """

    def find_class(self, module: str, name: str) -> Any:
        # pickles of protocol < 3 use Python 2 names (__builtin__.set); map them as pickle does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        if module == "builtins":
            obj = getattr(builtins, name, None)
            if isinstance(obj, type) and issubclass(obj, BaseException):
                return obj
        raise UnsafePayload(f"refused to load {module}.{name}: only plain data types are admitted")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePayload("refused a persistent id: only plain data types are admitted")


def restricted_loads(data: bytes) -> Any:
    return RestrictedUnpickler(io.BytesIO(data)).load()


class Refused:
    """An inert stand-in for a global the lenient unpickler refused: the real module is never
    imported and the real callable never runs; this only records what was asked for."""

    refused = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args


class _LenientUnpickler(RestrictedUnpickler):
    """Reads the plain-data envelope (a Celery meta dict) around anything it refuses."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self.refused: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except UnsafePayload:
            self.refused.append(f"{module}.{name}")
            return type(name, (Refused,), {"refused": f"{module}.{name}"})


def lenient_loads(data: bytes) -> tuple[Any, list[str]]:
    """(object, refused globals): plain data as is, anything else as inert Refused objects."""
    u = _LenientUnpickler(io.BytesIO(data))
    return u.load(), u.refused


def _default(obj: Any) -> Any:
    if isinstance(obj, Refused):
        raise UnsafePayload(f"refused to load {obj.refused}: only plain data types are admitted")
    if isinstance(obj, BaseException):
        return {"exc_type": type(obj).__qualname__, "exc_message": list(obj.args), "exc_module": type(obj).__module__}
    if isinstance(obj, decimal.Decimal):
        return str(obj)
    if isinstance(obj, (set, frozenset, range)):
        return list(obj)
    if isinstance(obj, (bytes, bytearray)):
        try:
            return bytes(obj).decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(obj).decode("ascii")
    if isinstance(obj, (dt.timedelta,)):
        return obj.total_seconds()
    if isinstance(obj, (complex, slice)):
        return str(obj)
    raise TypeError(f"cannot represent {type(obj).__name__} as JSON")


def to_json_text(obj: Any) -> bytes:
    """UTF-8 JSON text for a decoded value (datetimes ISO 8601, decimals and UUIDs as strings)."""
    out = orjson.dumps(obj, default=_default, option=orjson.OPT_NON_STR_KEYS)
    # orjson's output keeps a 4 KiB allocation however short the JSON, so a batch of short
    # values would hold many times its size (tests/test_memory.py); a copy of exactly its
    # length lets that go.
    return bytes(memoryview(out)) if len(out) < 2048 else out


def _kombu_hook(obj: dict[str, Any]) -> Any:
    # kombu's JSON encoder writes {"__type__": "datetime", "__value__": "..."}; the value is
    # already the queryable text form (ISO 8601, UUID or decimal string, utf-8 bytes).
    if len(obj) == 2 and obj.get("__type__") in _KOMBU_TYPES and "__value__" in obj:
        return obj["__value__"]
    return obj


MAX_INFLATED = 64 * 1024**2
"""The most a compressed payload (Celery 5.7 result_compression) may inflate to. A 2 MB zlib
payload can inflate to 2 GB: beyond this bound it is not inflated; its stored bytes are
archived as they are, with a decode_error. The bound keeps a run's memory bounded even where
a payload becomes Python objects (several times its size) before its JSON copy is made
(tests/test_bomb.py)."""


class TooLarge(UnsafePayload):
    """A compressed payload that inflates beyond MAX_INFLATED."""


def _mib(n: int) -> str:
    return f"{n / 1024**2:g} MiB" if n >= 1024**2 else f"{n:,} bytes"


def _inflate(body: bytes, ctype: str, limit: int) -> bytes:
    """``body`` decompressed as ``ctype``, never holding more than ``limit`` + 1 bytes of output."""
    out: list[bytes] = []
    size = 0
    if ctype == "application/zstd":
        import zstandard

        with zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True) as reader:
            data = reader.read(limit + 1)
        if len(data) > limit:
            raise TooLarge(f"not decompressed: it inflates to more than {_mib(limit)} ({ctype}); the stored bytes are kept")
        check = zstandard.ZstdDecompressor().decompressobj()
        check.decompress(body)  # bounded: its output is known to be within the limit now
        if not check.eof:
            raise ValueError(f"truncated {ctype} payload")
        return bytes(data)
    make: dict[str, Callable[[], Any]] = {"application/x-gzip": zlib.decompressobj, "zlib": zlib.decompressobj, "application/x-bz2": bz2.BZ2Decompressor,
            "application/x-lzma": lzma.LZMADecompressor}
    if ctype not in make:
        raise UnsafePayload(f"unsupported result_compression {ctype!r}")
    rest = body
    while True:  # streams one after another (bz2 and lzma allow that), as their decompress() functions read them
        d: Any = make[ctype]()
        chunk = d.decompress(rest, limit + 1 - size)  # at most one byte past the limit
        size += len(chunk)
        out.append(chunk)
        if size > limit:
            raise TooLarge(f"not decompressed: it inflates to more than {_mib(limit)} ({ctype}); the stored bytes are kept")
        if not d.eof:
            raise ValueError(f"truncated {ctype} payload")
        rest = d.unused_data
        if ctype in ("application/x-gzip", "zlib") or not rest:
            return b"".join(out)


def split_compressed(data: bytes) -> tuple[str, bytes]:
    """A Celery 5.7 compressed payload's (compression content type, compressed body)."""
    header_end = data.index(b"\x00", len(COMPRESSED_MAGIC))
    return data[len(COMPRESSED_MAGIC) : header_end].decode("ascii"), data[header_end + 1 :]


def decompress(data: bytes, limit: int = MAX_INFLATED) -> tuple[str, bytes]:
    """Split a Celery 5.7 compressed payload into (compression content type, plain bytes);
    TooLarge if it would inflate beyond ``limit`` bytes."""
    ctype, body = split_compressed(data)
    return ctype, _inflate(body, ctype, limit)


def _load(raw: bytes, serializer: str) -> Any:
    """A payload that is not a pickle, loaded as Celery's configured serializer writes it."""
    if serializer == "json":
        return json.loads(raw, object_hook=_kombu_hook) if b'"__type__"' in raw else orjson.loads(raw)
    if serializer == "msgpack":
        import msgpack

        return msgpack.unpackb(raw, raw=False, strict_map_key=False)
    if serializer == "yaml":
        import yaml

        return yaml.safe_load(raw)
    if serializer == "pickle":
        raise UnsafePayload("not a pickle (no protocol header)")
    raise UnsafePayload(f"unknown serializer {serializer!r}")


def decode_one(raw: bytes, serializer: str) -> bytes:
    """Decode one stored payload to UTF-8 JSON text; raises on anything unsafe or corrupt."""
    if raw[:1] == b"\x80":  # a pickle, whatever the configured serializer (Celery <= 5.6)
        return to_json_text(restricted_loads(raw))
    if serializer == "json" and b'"__type__"' not in raw:
        orjson.loads(raw)  # validates JSON and UTF-8: the stored text is already the JSON copy
        return raw
    return to_json_text(_load(raw, serializer))


_JSON_SYNTAX = msgspec.json.Decoder(msgspec.Raw)  # checks a value's JSON syntax, builds nothing


def json_text(stored: pa.Array) -> pa.Array | None:
    """``stored`` (a binary column of payloads) as a string column when every value is plain,
    valid UTF-8 JSON with no kombu type marker, for then the stored text is the queryable copy;
    else None. This accepts exactly what a full JSON parser does, without building the values:
    msgspec checks the syntax (skipping over string contents), Arrow's cast checks the UTF-8."""
    import pyarrow as pa

    try:
        text = stored.cast(pa.string())
    except pa.ArrowInvalid:
        return None
    try:
        for _ in map(_JSON_SYNTAX.decode, stored.drop_null().to_pylist()):  # iterates in C
            pass
    except (msgspec.DecodeError, RecursionError):  # msgspec nests ~985 deep at most: such a value goes one by one
        return None
    data = stored.buffers()[2]  # the values' bytes, back to back: a marker found across two
    if data is not None and b'"__type__"' in data.to_pybytes():  # values only takes the exact path
        return None
    return text


def plain_json(values: Sequence[bytes | None]) -> bool:
    """``json_text`` for a list of payloads."""
    import pyarrow as pa

    return json_text(pa.array(values, pa.binary())) is not None


def decode_column(
    values: Sequence[bytes | None], serializer: str, field: str
) -> tuple[list[bytes | None], list[str | None], list[str | None]]:
    """Decode a column of stored payloads: (UTF-8 JSON texts, errors, compression types).

    Texts stay bytes: Arrow takes UTF-8 bytes for a string column ten times faster than str.
    A value that cannot be decoded safely gives a null text and an error naming the field.
    """
    if serializer == "json" and plain_json(values):
        nulls: list[str | None] = [None] * len(values)
        return list(values), nulls, nulls
    return decode_each(values, serializer, field)


def decode_each(
    values: Sequence[bytes | None], serializer: str, field: str
) -> tuple[list[bytes | None], list[str | None], list[str | None]]:
    """``decode_column`` value by value, for a column known not to be all plain JSON."""
    texts: list[bytes | None] = []
    errors: list[str | None] = []
    compressions: list[str | None] = []
    for raw in values:
        compression = None
        if raw is None:
            texts.append(None)
            errors.append(None)
            compressions.append(None)
            continue
        try:
            if raw[: len(COMPRESSED_MAGIC)] == COMPRESSED_MAGIC:
                compression, body = split_compressed(raw)
                raw = _inflate(body, compression, MAX_INFLATED)
            texts.append(decode_one(raw, serializer))
            errors.append(None)
        except (UnsafePayload, pickle.UnpicklingError) as exc:
            texts.append(None)
            errors.append(f"{field}: {exc}")
        except Exception as exc:  # noqa: BLE001 - corrupt payloads raise anything; the bytes are kept
            texts.append(None)
            errors.append(f"{field}: cannot decode as {serializer}: {type(exc).__name__}: {exc}"[:500])
        compressions.append(compression)
    return texts, errors, compressions


def decode_value(raw: bytes, serializer: str) -> tuple[Any, str | None, str, list[str]]:
    """A whole stored value (a key-value backend's meta) as Python data:
    (object, compression, content type, refused globals). Raises if it cannot be read."""
    compression = None
    if raw[: len(COMPRESSED_MAGIC)] == COMPRESSED_MAGIC:
        compression, raw = decompress(raw)
    if raw[:1] == b"\x80":
        obj, refused = lenient_loads(raw)
        return obj, compression, PICKLE_CONTENT_TYPE, refused
    return _load(raw, serializer), compression, SERIALIZERS.get(serializer, ("?", ""))[0], []
