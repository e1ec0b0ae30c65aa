"""PII masking, a processor stage: mapped records are masked field by field before they are produced.

The ``pii`` section of the migration config (:mod:`crmflow.pii`) says which fields are personal data and
which policy masks each. In the production profile the stage is inactive (``Masker.active`` is False) and
the worker skips it; in staging and test it masks every mapped record::

    masker = Masker.from_config(cfg)
    if masker.active:
        record = masker.mask("account", record)

Modules: :mod:`~processors.masking.keyed` (the keyed HMAC and its encodings),
:mod:`~processors.masking.policies` (one pure function per policy and kind of field),
:mod:`~processors.masking.masker` (the per-entity plans and the stage).
"""

from __future__ import annotations

from processors.masking.keyed import KeyedHash
from processors.masking.masker import STAGE, Masker, state_cipher_of
from processors.masking.policies import MaskFn, mask_function

__all__ = ["STAGE", "KeyedHash", "MaskFn", "Masker", "mask_function", "state_cipher_of"]
