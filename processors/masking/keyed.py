"""Keyed pseudonyms: HMAC-SHA256 under the pii key, and compact encodings of the MAC.

HMAC is ``H((K ^ opad) || H((K ^ ipad) || m))`` (RFC 2104). The two keyed SHA-256 states are computed once
per key and copied per value, which costs a third of ``hmac.digest`` (its one-shot call sets the key up
again every time); ``tests/unit/processors/test_masking.py`` checks the result against ``hmac.digest``.
Every message starts with a domain (``b"email\\0"``, ``b"name\\0"``...) so pseudonyms of different kinds of
value never coincide; the entity and the field are not part of it, so the same e-mail address gets the same
pseudonym in an account and in a contact, in every run with the same key.
"""

from __future__ import annotations

import binascii
import hashlib
from typing import Final

from pydantic import SecretStr

_BLOCK: Final = 64  # SHA-256 block size
_BASE64: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_BASE32: Final = b"abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 alphabet, lower case
# Base64 digit i → base32 digit i mod 32: keeps the low 5 of its 6 bits (see base32_token).
_TO_BASE32: Final = bytes.maketrans(_BASE64, _BASE32 * 2)
_LETTERS: Final = b"abcdefghijklmnopqrstuvwxyz"
_TO_LETTERS: Final = bytes.maketrans(_BASE64, (_LETTERS * 3)[:64])


class KeyedHash:
    """HMAC-SHA256 under one key. Holds no copy of the key, only the two keyed hash states."""

    __slots__ = ("_inner", "_outer", "key_id")

    def __init__(self, key: SecretStr) -> None:
        raw = key.get_secret_value().encode()
        if len(raw) > _BLOCK:
            raw = hashlib.sha256(raw).digest()
        raw = raw.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in raw))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in raw))
        #: Names the key in logs and run metadata without revealing it (a MAC of a constant).
        self.key_id: str = self.mac(b"crmflow-pii-key-id\0", "").hex()[:12]

    def __repr__(self) -> str:
        return f"KeyedHash(key_id={self.key_id!r})"

    def mac(self, domain: bytes, value: str) -> bytes:
        """HMAC-SHA256 of ``domain + value`` (UTF-8)."""
        inner = self._inner.copy()
        inner.update(domain + value.encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def number(self, domain: bytes, value: str) -> int:
        """The MAC as a 256-bit integer, for deriving digits and letters."""
        return int.from_bytes(self.mac(domain, value), "big")


def base32_token(mac: bytes, length: int) -> str:
    """``length`` (≤ 24) base32 characters of ``mac``, 5 bits each.

    Each character is a base64 digit (6 bits of the MAC, encoded in C) reduced to its low 5 bits: the same
    5 uniformly random bits a base32 digit carries, at a sixth of ``base64.b32encode``'s cost (pure Python).
    """
    return binascii.b2a_base64(mac[:18], newline=False)[:length].translate(_TO_BASE32).decode()


def letters_token(mac: bytes, length: int) -> str:
    """``length`` (≤ 24) lower-case letters of ``mac``: each base64 digit of the MAC taken modulo 26.

    Slightly uneven (12 letters come 3 times in 64, the others twice): 4.67 bits a letter instead of 4.70.
    """
    return binascii.b2a_base64(mac[:18], newline=False)[:length].translate(_TO_LETTERS).decode()
