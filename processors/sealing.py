"""The processor's internal values, sealed: what it keeps for itself before masking never sits in Kafka in clear.

Clean accounts on their way to the matcher (``<prefix>.dedupe.account``) and the matcher's state
(``<prefix>.dedupe.account.state``) hold real names, e-mails, phones and addresses whatever the profile: the
matcher compares real values. With a :class:`~crmflow.pii.StateCipher` (``pii.encrypt_state``), the codecs
here seal each value on its way out and open it on its way in, in the processor's memory only; the Avro
bytes underneath are unchanged. The topic name is authenticated with each value, the changelog key with
each state entry (see :meth:`ProcessStage.restore <processors.stage.ProcessStage.restore>`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from crmflow.pii import SealedDataError, StateCipher
from crmflow.runtime.stage import Decoder, Encoder
from crmflow.serialization import SerializationError


class SealedEncoder:
    """``inner``'s encoding of each record, sealed under ``cipher`` with the topic as context."""

    def __init__(self, inner: Encoder, cipher: StateCipher, topic: str) -> None:
        self._inner = inner
        self._cipher = cipher
        self._context = topic.encode()

    def encode_many(self, objs: Iterable[Mapping[str, Any]]) -> list[bytes]:
        return [self._cipher.seal(data, self._context) for data in self._inner.encode_many(objs)]


class SealedDecoder:
    """Opens a sealed value, then decodes it with ``inner``; a value that does not open is a
    :class:`~crmflow.serialization.SerializationError` (the runtime dead-letters it, still sealed)."""

    def __init__(self, inner: Decoder, cipher: StateCipher, topic: str) -> None:
        self._inner = inner
        self._cipher = cipher
        self._context = topic.encode()

    def decode(self, data: bytes, *, origin: str | None = None) -> dict[str, Any]:
        try:
            clear = self._cipher.open(data, self._context)
        except SealedDataError as exc:
            raise SerializationError(str(exc), origin=origin) from None
        return self._inner.decode(clear, origin=origin)
