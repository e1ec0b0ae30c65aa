"""The masking stage: :class:`Masker` masks mapped records field by field, as the ``pii`` config says.

Build it once per process (:meth:`Masker.from_config`); it compiles one plan per entity – the masked fields
in entity order, each with its mask function – so :meth:`Masker.mask` is one loop over a few tuples.

full_name is rebuilt, not masked on its own: by default it is ``masked first_name + " " + masked
last_name`` (a missing part skipped), exactly as the mapper joins the clean parts, so the masked record
stays consistent (and first and last names share one pseudonym domain, so a name masks the same in either
field, in accounts and contacts alike). Only when neither part is there (both missing in the source, or
redacted to null) is full_name pseudonymised as a whole. A rule for full_name in the config replaces this.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from crmflow.configbase import ConfigLoadError, Problem, format_path
from crmflow.entities import ENTITY_NAMES, business_fields
from crmflow.exceptions import ConfigError
from crmflow.pii import (
    DEFAULT_POLICIES,
    FieldKind,
    FieldRule,
    PiiConfig,
    PiiKeyError,
    Policy,
    Profile,
    StateCipher,
    field_kind,
    pii_key,
    resolve_profile,
    state_cipher,
)
from processors.config import ProcessorConfig
from processors.masking.keyed import KeyedHash
from processors.masking.policies import MaskFn, mask_function

log = logging.getLogger(__name__)

STAGE = "mask"
_NAME_PARTS = ("first_name", "last_name")


class _Masks:
    """The mask functions of one masker, one per (policy, kind, token, prefix): entities share them and
    their caches, so a first name cached for an account is a hit for a contact."""

    def __init__(self, pii: PiiConfig, keyed: KeyedHash) -> None:
        self._pii = pii
        self._keyed = keyed
        self._built: dict[tuple[str, str, str | None, str], MaskFn | None] = {}

    def get(self, policy: Policy, kind: FieldKind, token: str | None, prefix: str) -> MaskFn | None:
        key = (policy, kind, token, prefix)
        if key not in self._built:
            self._built[key] = mask_function(policy, kind, self._keyed, self._pii, token=token, prefix=prefix)
        return self._built[key]


class _Plan:
    """One entity's compiled masks."""

    __slots__ = ("full_name", "policies", "steps")

    def __init__(self, entity: str, pii: PiiConfig, masks: _Masks) -> None:
        configured = pii.entities.of(entity)
        fields = business_fields(entity)
        steps: list[tuple[str, MaskFn]] = []
        self.policies: dict[str, str] = {}
        for field in fields:
            rule: FieldRule | None = configured.get(field)
            if rule is None and pii.defaults and field in DEFAULT_POLICIES:
                rule = FieldRule(policy=DEFAULT_POLICIES[field])
            if rule is None:
                continue
            fn = masks.get(rule.policy, field_kind(entity, field), rule.token, rule.prefix)
            if fn is not None:
                steps.append((field, fn))
                self.policies[field] = rule.policy
        self.steps = tuple(steps)
        masked_parts = any(field in self.policies for field in _NAME_PARTS)
        rebuild = "full_name" in fields and "full_name" not in configured and masked_parts
        #: The whole-name pseudonym used when there is no part to rebuild full_name from (None: no rebuild).
        self.full_name: MaskFn | None = masks.get("pseudonym", "name", None, "") if rebuild else None
        if rebuild:
            self.policies["full_name"] = "rebuilt from first_name and last_name"


class Masker:
    """Masks the PII fields of mapped records; a no-op (``active`` False) in the production profile.

    ``key`` is needed unless the profile is production; ``profile`` defaults to the config's.
    """

    def __init__(self, pii: PiiConfig, *, profile: Profile | None = None, key: SecretStr | None = None) -> None:
        self.profile: Profile = profile or pii.profile
        #: False in production: the worker skips the stage, the target receives the real values.
        self.active = self.profile != "production"
        self.key_id: str | None = None
        self._plans: dict[str, _Plan] = {}
        if not self.active:
            return
        if key is None:
            raise ConfigError(f"the {self.profile} profile masks records and needs the pii key (pii.key_env)")
        keyed = KeyedHash(key)
        self.key_id = keyed.key_id
        masks = _Masks(pii, keyed)
        self._plans = {entity: _Plan(entity, pii, masks) for entity in ENTITY_NAMES}
        log.info("pii masking active: profile %s, key %s", self.profile, self.key_id, extra={"stage": STAGE})

    @classmethod
    def from_config(cls, cfg: ProcessorConfig) -> Masker:
        """The masker of ``cfg.pii`` and ``$CRMFLOW_PII_PROFILE``; a key error names file, line and key path."""
        pii = cfg.pii or PiiConfig()
        profile = resolve_profile(cfg.pii)
        if profile == "production":
            return cls(pii, profile=profile)
        try:
            key = pii_key(pii)
        except PiiKeyError as exc:
            line = cfg.line_of(exc.path) if cfg.pii is not None else None
            raise ConfigLoadError([Problem("error", exc.message, format_path(exc.path), cfg.file, line)]) from None
        return cls(pii, profile=profile, key=key)

    def __repr__(self) -> str:
        return f"Masker(profile={self.profile!r}, active={self.active}, key_id={self.key_id!r})"

    def policies(self, entity: str) -> dict[str, str]:
        """Masked field → policy of ``entity`` (empty when inactive), for operators and docs."""
        plan = self._plans.get(entity)
        return dict(plan.policies) if plan is not None else {}

    def mask(self, entity: str, record: Mapping[str, Any]) -> dict[str, Any]:
        """A masked copy of the mapped ``record`` of ``entity`` (an unmasked copy when inactive).

        Null fields stay null; fields missing from ``record`` stay missing.
        """
        out = dict(record)
        plan = self._plans.get(entity)
        if plan is None:
            return out
        for field, fn in plan.steps:
            value = out.get(field)
            if value is not None:
                out[field] = fn(value)
        if plan.full_name is not None and out.get("full_name") is not None:
            first, last = out.get("first_name"), out.get("last_name")
            if first is not None and last is not None:
                out["full_name"] = f"{first} {last}"
            elif first is not None or last is not None:
                out["full_name"] = first if first is not None else last
            else:
                out["full_name"] = plan.full_name(out["full_name"])
        return out

    __call__ = mask


def state_cipher_of(cfg: ProcessorConfig, profile: Profile) -> StateCipher | None:
    """The cipher of the processor's internal topics (:func:`crmflow.pii.state_cipher`); a missing key is an
    error naming the config file, line and key path (``pii.key_env``: the variable, CRMFLOW_PII_KEY by default)."""
    try:
        return state_cipher(cfg.pii, profile)
    except PiiKeyError as exc:
        line = cfg.line_of(exc.path) if cfg.pii is not None else None
        raise ConfigLoadError([Problem("error", exc.message, format_path(exc.path), cfg.file, line)]) from None
