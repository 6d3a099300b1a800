"""How Plansmith talks to Temporal: TLS (or mTLS), big payloads compressed, and payloads
encrypted end to end.

:func:`tls_config` turns the ``PLANSMITH_TEMPORAL_TLS*`` settings into the SDK's
``TLSConfig``; :func:`data_converter` is the pydantic converter, with
:class:`EncryptionCodec` when ``PLANSMITH_PAYLOAD_KEY`` is set. Every process connects
through :func:`workflows.client.connect`, so the worker, the API and the CLI encrypt and
decrypt alike; the Temporal server (and its Web UI, unless a codec server is set up)
sees only ciphertext.

Payloads over :data:`COMPRESS_OVER_BYTES` (a big plan's input, the state it carries over
continue-as-new) are compressed with zlib (:class:`CompressionCodec`), always, so a
10,000-step plan fits Temporal's 2 MB payload limit; smaller ones stay plain JSON, readable
in the Web UI and the ``temporal`` CLI.

Each encrypted payload carries the id of the key that encrypted it
(``encryption-key-id``), so a new key can encrypt while older ones
(``PLANSMITH_PAYLOAD_OLD_KEYS``) still decrypt the histories they wrote. The
``cryptography`` package (~8 MiB in a process) is imported only when a key is set.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)
from temporalio.service import TLSConfig

from config import ConfigError, TemporalSettings

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ENCODING = b"binary/encrypted"
CIPHER = b"AES-256-GCM"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12


COMPRESSED = b"binary/zlib"
COMPRESS_OVER_BYTES = 256 * 1024
# A compressed payload may unpack to at most this much: one crafted to unpack to gigabytes
# (sent with the `temporal` CLI, say) is refused instead of filling the worker's memory.
# Temporal refuses payloads over 2 MB; JSON state compresses well, but not 32 times more.
MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024


class PayloadTooLarge(ValueError):
    """A compressed payload unpacks to more than :data:`MAX_DECOMPRESSED_BYTES`."""


class CompressionCodec(PayloadCodec):
    """zlib over each whole payload (metadata and data) bigger than ``over`` bytes."""

    def __init__(self, over: int = COMPRESS_OVER_BYTES, limit: int = MAX_DECOMPRESSED_BYTES):
        self.over = over
        self.limit = limit

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for p in payloads:
            if p.ByteSize() <= self.over:
                out.append(p)
                continue
            out.append(
                Payload(
                    metadata={"encoding": COMPRESSED},
                    data=zlib.compress(p.SerializeToString(), 6),
                )
            )
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for p in payloads:
            if p.metadata.get("encoding") != COMPRESSED:
                out.append(p)
                continue
            unpack = zlib.decompressobj()
            try:
                plain = unpack.decompress(p.data, self.limit)
            except zlib.error as e:
                raise PayloadTooLarge(f"a compressed payload does not decompress: {e}") from None
            if unpack.unconsumed_tail or not unpack.eof:
                raise PayloadTooLarge(
                    f"a compressed payload unpacks to more than {self.limit:,} bytes "
                    "(or is cut short); refused"
                )
            out.append(Payload.FromString(plain))
        return out


class CodecChain(PayloadCodec):
    """Codecs applied in order on the way out, in reverse order on the way in."""

    def __init__(self, *codecs: PayloadCodec):
        self.codecs = codecs

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = list(payloads)
        for codec in self.codecs:
            out = await codec.encode(out)
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = list(payloads)
        for codec in reversed(self.codecs):
            out = await codec.decode(out)
        return out


class PayloadDecryptionError(ValueError):
    """A payload cannot be decrypted: its key is unknown here, or it was altered."""


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over each whole payload (its metadata and data), with a fresh random
    nonce each time; the key's id travels in the metadata, outside the ciphertext."""

    def __init__(self, key_id: str, keys: Mapping[str, bytes]):
        if key_id not in keys:
            raise ValueError(f"no key {key_id!r} among the keys given")
        # imported here: a process without a payload key never loads cryptography
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.key_id = key_id
        self._ciphers: dict[str, AESGCM] = {kid: AESGCM(key) for kid, key in keys.items()}
        self._invalid_tag = InvalidTag

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        cipher = self._ciphers[self.key_id]
        out = []
        for p in payloads:
            nonce = os.urandom(NONCE_BYTES)
            sealed = cipher.encrypt(nonce, p.SerializeToString(), self.key_id.encode())
            out.append(
                Payload(
                    metadata={
                        "encoding": ENCODING,
                        "encryption-cipher": CIPHER,
                        KEY_ID: self.key_id.encode(),
                    },
                    data=nonce + sealed,
                )
            )
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for p in payloads:
            if p.metadata.get("encoding") != ENCODING:
                out.append(p)  # written before encryption was turned on
                continue
            kid = p.metadata.get(KEY_ID, b"").decode()
            cipher = self._ciphers.get(kid)
            if cipher is None:
                raise PayloadDecryptionError(
                    f"payload encrypted with key {kid!r}, which this process does not have "
                    "(add it to PLANSMITH_PAYLOAD_OLD_KEYS)"
                )
            try:
                plain = cipher.decrypt(p.data[:NONCE_BYTES], p.data[NONCE_BYTES:], kid.encode())
            except self._invalid_tag:
                raise PayloadDecryptionError(
                    f"payload encrypted with key {kid!r} does not decrypt (altered, or another "
                    "key under the same id)"
                ) from None
            out.append(Payload.FromString(plain))
        return out


PLAIN_CONVERTER = dataclasses.replace(pydantic_data_converter, payload_codec=CompressionCodec())


def data_converter(settings: TemporalSettings | None = None) -> DataConverter:
    """The pydantic converter, big payloads compressed; with a payload key, payloads and
    failure messages are encrypted too (a failure's message and stack trace move into an
    encrypted payload), after compression."""
    keys = settings.payload_keys() if settings is not None else None
    if keys is None:
        return PLAIN_CONVERTER
    current, by_id = keys
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=CodecChain(CompressionCodec(), EncryptionCodec(current, by_id)),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def _read(path: str | None, variable: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as e:
        raise ConfigError(f"{variable}: cannot read {path}: {e.strerror or e}") from None


def tls_config(settings: TemporalSettings) -> TLSConfig | bool:
    """The TLS to reach Temporal with: False (plain TCP, the dev server), True (TLS with the
    system's roots) or a ``TLSConfig`` with a CA, a client certificate (mTLS) and the
    server's name as the settings give them."""
    if not settings.tls_enabled:
        return False
    env = TemporalSettings.env_name
    ca = _read(settings.tls_ca, env("tls_ca"))
    cert = _read(settings.tls_cert, env("tls_cert"))
    key = _read(settings.tls_key, env("tls_key"))
    if ca is None and cert is None and not settings.tls_server_name:
        return True
    return TLSConfig(
        server_root_ca_cert=ca,
        domain=settings.tls_server_name,
        client_cert=cert,
        client_private_key=key,
    )
