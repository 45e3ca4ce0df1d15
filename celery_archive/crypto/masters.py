"""Master keys: what wraps each data file's own data key. ``keyfile:PATH`` (32 bytes on local
disk, AES-256-GCM) or ``kms:KEY`` (AWS KMS GenerateDataKey / Decrypt). Both bind a wrapped key to
its data file (AES-GCM associated data / the KMS encryption context), so a key object copied to
another file's name does not open it. Errors name the key and what to do; never the key's bytes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Protocol

from celery_archive.errors import ConfigError, KeyMaterialError

_NONCE = 12
_CONTEXT = "celery-archive:file"


class Master(Protocol):
    @property
    def spec(self) -> str:
        """``keyfile:<fingerprint>`` or ``kms:<key id>``: which master a key object needs (no secret)."""

    def new(self, file: str) -> tuple[bytes, bytes]:
        """A new 256-bit data key for data file ``file``: (plaintext, wrapped)."""

    def unwrap(self, wrapped: bytes, file: str) -> bytes:
        """The data key of ``file`` from its wrapped form; KeyMaterialError if this master cannot."""


class KeyfileMaster:
    """A 256-bit master key in a local file (``head -c 32 /dev/urandom > master.key``)."""

    def __init__(self, path: Path) -> None:
        self.path = path.expanduser()
        try:
            key = self.path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"sink option encrypt=keyfile:{path}: cannot read the master key ({exc.strerror or exc}); "
                              "make one with `head -c 32 /dev/urandom > master.key` (and keep a copy: without it the "
                              "archive cannot be read)") from exc
        if len(key) != 32:
            raise ConfigError(f"sink option encrypt=keyfile:{path}: the file holds {len(key)} bytes, a master key is 32 "
                              "random bytes (`head -c 32 /dev/urandom > master.key`)")
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)
        # names the key in key objects and messages without revealing it
        self.fingerprint = hashlib.sha256(b"celery-archive master key\0" + key).hexdigest()[:16]

    @property
    def spec(self) -> str:
        return f"keyfile:{self.fingerprint}"

    def new(self, file: str) -> tuple[bytes, bytes]:
        key, nonce = os.urandom(32), os.urandom(_NONCE)
        return key, nonce + self._aead.encrypt(nonce, key, f"{_CONTEXT}={file}".encode())

    def unwrap(self, wrapped: bytes, file: str) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], f"{_CONTEXT}={file}".encode())
        except InvalidTag as exc:
            raise KeyMaterialError(f"{file}: its data key does not open with the master key in {self.path} "
                                   f"(fingerprint {self.fingerprint}): give the keyfile the archive was written with") from exc


class KmsMaster:
    """An AWS KMS key (id, ARN or alias): data keys from GenerateDataKey, opened by Decrypt."""

    def __init__(self, key_id: str) -> None:
        if not key_id:
            raise ConfigError("sink option encrypt=kms: names no key: use encrypt=kms:alias/NAME, a key id or an ARN")
        self.key_id = key_id
        self._client: Any = None

    @property
    def spec(self) -> str:
        return f"kms:{self.key_id}"

    def _kms(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.session.Session().client("kms")
        return self._client

    def new(self, file: str) -> tuple[bytes, bytes]:
        try:
            out = self._kms().generate_data_key(KeyId=self.key_id, KeySpec="AES_256", EncryptionContext={_CONTEXT: file})
        except Exception as exc:
            raise self._error(exc, "kms:GenerateDataKey", file) from exc
        return bytes(out["Plaintext"]), bytes(out["CiphertextBlob"])

    def unwrap(self, wrapped: bytes, file: str) -> bytes:
        try:
            out = self._kms().decrypt(CiphertextBlob=wrapped, KeyId=self.key_id, EncryptionContext={_CONTEXT: file})
        except Exception as exc:
            raise self._error(exc, "kms:Decrypt", file) from exc
        return bytes(out["Plaintext"])

    def _error(self, exc: Exception, permission: str, file: str) -> KeyMaterialError:
        from botocore.exceptions import ClientError, NoCredentialsError

        if isinstance(exc, NoCredentialsError):
            return KeyMaterialError(f"no AWS credentials to call KMS for key {self.key_id} ({permission}): set AWS_PROFILE, "
                                    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an instance role")
        code = str(exc.response.get("Error", {}).get("Code", "")) if isinstance(exc, ClientError) else ""
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(exc, ClientError) else None
        if code in ("AccessDeniedException", "AccessDenied", "403") or status == 403:
            return KeyMaterialError(f"KMS denied {permission} on key {self.key_id} (for {file}): grant {permission} on that "
                                    "key to the identity running celery-archive")
        if code in ("NotFoundException", "DisabledException", "KMSInvalidStateException"):
            return KeyMaterialError(f"KMS key {self.key_id} cannot be used ({code}) for {file}: check the key id or alias "
                                    "and that the key is enabled")
        if code in ("InvalidCiphertextException", "IncorrectKeyException"):
            return KeyMaterialError(f"{file}: its data key was not wrapped by KMS key {self.key_id} (or its key object is "
                                    "damaged): give the key the archive was written with")
        return KeyMaterialError(f"KMS {permission} on key {self.key_id} failed for {file}: {code or type(exc).__name__}")


def master(value: str) -> Master:
    """The master key of sink option ``encrypt=keyfile:PATH`` or ``encrypt=kms:KEY``."""
    kind, sep, rest = value.partition(":")
    if kind == "keyfile" and sep and rest:
        return KeyfileMaster(Path(rest))
    if kind == "kms" and sep:
        return KmsMaster(rest)
    raise ConfigError(f"sink option encrypt={value!r}: use encrypt=keyfile:/path/to/master.key (32 random bytes) "
                      "or encrypt=kms:alias/NAME (an AWS KMS key id, ARN or alias)")
