"""Encrypted archives (sink option ``encrypt=keyfile:PATH`` or ``encrypt=kms:KEY``), for erasure
by crypto-shredding: every data file gets its own random 256-bit data key, kept wrapped by the
master key (``masters.py``) in ``keys/<data file key>.json``, a prefix that is never Object-Locked;
the manifest names that object, never its bytes. Destroying it makes every copy of the file
(a locked object version, a backup) unreadable.

The one contract formats use is :class:`Cipher`, a data file's key:

* ``seal(data, at)`` / ``open(data, at)``: authenticated encryption (AES-256-GCM) of one frame
  that starts at byte ``at`` of the file (the associated data binds it to the file and place);
* ``parquet_write()`` / ``parquet_read()``: pyarrow's Parquet modular encryption properties
  (footer and every column encrypted, AES-GCM), whose key-encryption key is this data key.

Sinks carry the URL's :class:`Encryption` (``sink.encryption``); ``cipher_of(sink, entry)``
and ``cipher_at(sink, key)`` give a stored file's cipher (None for a file that is not encrypted).
"""

from __future__ import annotations

import base64
import functools
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from celery_archive.archive.layout import KEYS
from celery_archive.crypto.masters import Master, master
from celery_archive.errors import DamagedObjectError, KeyMaterialError, ObjectNotFoundError

if TYPE_CHECKING:
    from celery_archive.archive.manifest import FileEntry
    from celery_archive.sinks import Sink

_NONCE = 12
JSONL_MAGIC = b"CAENC1\n"  # the first bytes of an encrypted JSONL file (then a JSON header line)


def key_name(data_key: str) -> str:
    """The object that holds data file ``data_key``'s wrapped data key."""
    return f"{KEYS}{data_key}.json"


@dataclass(frozen=True)
class Cipher:
    """One data file's data key (``secret``: never printed), stored wrapped at ``name``."""

    file: str
    name: str
    secret: bytes = field(repr=False)

    @functools.cached_property
    def _aead(self) -> Any:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        return AESGCM(self.secret)

    def seal(self, data: bytes, at: int) -> bytes:
        """``data`` encrypted: nonce, ciphertext and tag, for the frame at byte ``at``."""
        nonce = os.urandom(_NONCE)
        sealed: bytes = self._aead.encrypt(nonce, data, f"{self.file}@{at}".encode())
        return nonce + sealed

    def open(self, sealed: bytes, at: int) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            return bytes(self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], f"{self.file}@{at}".encode()))
        except InvalidTag as exc:
            raise KeyMaterialError(f"{self.file}: the frame at byte {at} does not decrypt with its data key ({self.name}): "
                                   "the file or its key object is damaged") from exc

    def _factory(self) -> Any:
        import pyarrow.parquet.encryption as pe

        cipher = self

        class _Client(pe.KmsClient):  # type: ignore[misc]
            """pyarrow wraps the file's footer/column key with this file's data key (its KEK)."""

            def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
                return base64.b64encode(cipher.seal(key_bytes, 0)).decode("ascii")

            def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
                return cipher.open(base64.b64decode(wrapped_key), 0)

        return pe.CryptoFactory(lambda _config: _Client())

    def parquet_write(self) -> Any:
        import pyarrow.parquet.encryption as pe

        config = pe.EncryptionConfiguration(footer_key=self.name, uniform_encryption=True, plaintext_footer=False,
                                            double_wrapping=False, internal_key_material=True, data_key_length_bits=256)
        return self._factory().file_encryption_properties(pe.KmsConnectionConfig(), config)

    def parquet_read(self) -> Any:
        import pyarrow.parquet.encryption as pe

        return self._factory().file_decryption_properties(pe.KmsConnectionConfig())


class Encryption:
    """The sink URL's ``encrypt=`` option: the master key that wraps every data file's key."""

    def __init__(self, value: str) -> None:
        self.value = value  # keyfile:PATH or kms:KEY: a location, not a secret
        self.master: Master = master(value)

    def new_cipher(self, sink: Sink, data_key: str) -> Cipher:
        """A new data key for the data file ``data_key`` (not written yet), stored wrapped first."""
        secret, wrapped = self.master.new(data_key)
        name = key_name(data_key)
        body = {"file": data_key, "master": self.master.spec, "algorithm": "AES-256-GCM",
                "wrapped": base64.b64encode(wrapped).decode("ascii")}
        sink.put_bytes(name, orjson.dumps(body, option=orjson.OPT_SORT_KEYS) + b"\n")
        return Cipher(data_key, name, secret)

    def cipher(self, sink: Sink, data_key: str) -> Cipher:
        """The stored file ``data_key``'s cipher; KeyMaterialError naming the file when its key
        object is gone (destroyed by forget) or does not open with this master key."""
        name = key_name(data_key)
        try:
            with sink.open(name) as f:
                body = orjson.loads(f.read())
            wrapped = base64.b64decode(body["wrapped"])
        except ObjectNotFoundError as exc:
            raise KeyMaterialError(f"{data_key} is encrypted and its data key {name} is not in {sink.url}: it was "
                                   "destroyed (forget erased what the file held) or lost; the file cannot be read") from exc
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DamagedObjectError(f"{name} in {sink.url} is not a celery-archive key object: it is damaged") from exc
        if body.get("file") != data_key:
            raise DamagedObjectError(f"{name} in {sink.url} holds the key of {body.get('file')!r}, not of {data_key}")
        kind = str(body.get("master", "")).partition(":")[0]
        if kind != self.master.spec.partition(":")[0]:
            raise KeyMaterialError(f"{data_key} was encrypted with a {kind} master key ({body.get('master')}); "
                                   f"the sink URL gives encrypt={self.value}")
        return Cipher(data_key, name, self.master.unwrap(wrapped, data_key))

    def dataset_decryption(self, sink: Sink, filesystem: Any, first: str) -> Any:
        """pyarrow.dataset's ParquetDecryptionConfig for this archive's encrypted Parquet files:
        each file names its key object (its footer key id), whose key this master opens.

        pyarrow makes its KMS client on the first footer it decrypts, holding a lock of its own
        while it calls into Python for it; a scan thread that holds the GIL meanwhile (DuckDB's,
        in Scanner.to_reader) then waits on that lock, and neither goes on: a query that never
        ends. So the client is made here, on this thread, by opening the encrypted file
        ``first`` on ``filesystem`` before any scan, and kept for as long as a query may last."""
        import datetime as dt

        import pyarrow.dataset as ds
        import pyarrow.parquet as pq
        import pyarrow.parquet.encryption as pe

        enc, opened = self, dict[str, Cipher]()

        class _Resolver(pe.KmsClient):  # type: ignore[misc]
            def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
                raise KeyMaterialError("reading an archive never encrypts")

            def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
                name = master_key_identifier
                if name not in opened:
                    opened[name] = enc.cipher(sink, name[len(KEYS):].removesuffix(".json"))
                return opened[name].open(base64.b64decode(wrapped_key), 0)

        factory = pe.CryptoFactory(lambda _config: _Resolver())
        kms, config = pe.KmsConnectionConfig(), pe.DecryptionConfiguration(cache_lifetime=dt.timedelta(days=7))
        pq.read_metadata(first, filesystem=filesystem, decryption_properties=factory.file_decryption_properties(kms, config))
        return ds.ParquetDecryptionConfig(factory, kms, config)

    def destroy(self, sink: Sink, data_key: str) -> str:
        """Erase the file's key object (every version): no copy of the file opens again. Returns its name."""
        name = key_name(data_key)
        sink.erase(name)
        return name


def encryption_of(sink: Sink) -> Encryption | None:
    enc: Encryption | None = getattr(sink, "encryption", None)
    return enc


def _needs(sink: Sink, data_key: str) -> Encryption:
    enc = encryption_of(sink)
    if enc is None:
        raise KeyMaterialError(f"{data_key} in {sink.url} is encrypted: give the sink URL with its key, "
                               "e.g. ?encrypt=keyfile:/path/to/master.key or ?encrypt=kms:alias/NAME")
    return enc


def cipher_of(sink: Sink, entry: FileEntry) -> Cipher | None:
    """The cipher of a committed data file (its manifest entry says whether it is encrypted)."""
    if entry.encryption_key is None:
        return None
    return _needs(sink, entry.key).cipher(sink, entry.key)


def cipher_at(sink: Sink, data_key: str, encrypted: bool) -> Cipher | None:
    """The cipher of data file ``data_key`` when ``encrypted`` (what its bytes say), else None."""
    return _needs(sink, data_key).cipher(sink, data_key) if encrypted else None
