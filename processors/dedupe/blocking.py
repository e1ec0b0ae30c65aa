"""Blocking: the few keys under which a record meets its candidate duplicates.

A record is compared only with the records that share at least one of its block keys, so the work per
record depends on block sizes, not on how many records were seen. Each key is built to survive one kind
of variation the others do not:

==========  ===============================================  =========================================
kind        key                                              survives
==========  ===============================================  =========================================
``e``       e-mail (clean, lower case)                       any name change, moving house
``p``       phone (E.164)                                    any name change, a new e-mail
``b``       birth date + sorted initials of first/last name  typos, initials ("J."), middle initials,
                                                             first/last swapped, new e-mail and phone
``z``       country + postal code + sorted initials          as ``b``, when the birth date is missing
``s``       house number + Soundex(street name) + initials   as ``b``, when birth date and postal code
                                                             are missing; street abbreviations
``c``       city + Soundex(last name) + first initial        a typo in the first letter of the first
                                                             name, missing postal code and country
``a``       contacts: parent account + sorted initials       a contact entered twice for one account
==========  ===============================================  =========================================

Keys are stored as ``<kind>:<BLAKE2b digest>`` (see ``DedupeConfig.hash_block_keys``): the blocks table
then holds no e-mail, phone or birth date in clear text, and keys have a fixed, small size.

Oversized blocks: a block holding ``max_block_size`` ids is *closed*. Later records neither join it nor
are compared with its members; the ids it holds stay (so a restart behaves the same). A key that common
(a placeholder e-mail, a shared office phone, a big city with a frequent name) does not identify anyone,
and the other keys of a record still find its real duplicates. The deduper reports closed-block hits per
record (``DedupeResult.closed_blocks``) so they can be counted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from processors.dedupe.config import DedupeConfig, DedupeEntity
from processors.dedupe.features import Features, extract, fold, initial, initials_pair, soundex, street_form


def raw_block_keys(feats: Features, entity: DedupeEntity) -> list[str]:
    """The clear-text block keys of a feature dict (sorted, unique): ``kind|value|...``."""
    keys: set[str] = set()
    if email := feats.get("em"):
        keys.add(f"e|{email}")
    if phone := feats.get("ph"):
        keys.add(f"p|{phone}")
    pair = initials_pair(feats)
    if entity == "account":
        country = feats.get("co", "")
        if pair and (birth := feats.get("bd")):
            keys.add(f"b|{birth}|{pair}")
        if pair and (postal := feats.get("pc")):
            keys.add(f"z|{country}|{postal}|{pair}")
        city, first, last = feats.get("ci"), feats.get("fn"), feats.get("ln")
        if city and first and last:  # no country: it is the field most often lost ("Untied States")
            keys.add(f"c|{fold(city)}|{soundex(last)}{initial(first)}")
        if pair and (street := feats.get("st")):
            words = street_form(street).split()
            numbers = "".join(sorted(w for w in words if w.isdigit()))
            name = max((w for w in words if not w.isdigit()), key=len, default="")
            if numbers and name:
                keys.add(f"s|{numbers}|{soundex(name)}|{pair}")
    elif pair and (parent := feats.get("pa")):
        keys.add(f"a|{parent}|{pair}")
    return sorted(keys)


class BlockKeyer:
    """Turns feature dicts into the (optionally hashed) block keys of the ``blocks`` table."""

    def __init__(self, config: DedupeConfig) -> None:
        self.entity = config.entity
        self.hashed = config.hash_block_keys
        secret = config.block_key_secret
        self._secret = secret.get_secret_value().encode() if secret is not None else b""

    def keys(self, feats: Features) -> list[str]:
        raw = raw_block_keys(feats, self.entity)
        if not self.hashed:
            return raw
        return sorted({f"{key[0]}:{self._digest(key)}" for key in raw})

    def _digest(self, key: str) -> str:
        return hashlib.blake2b(key.encode(), digest_size=12, key=self._secret).hexdigest()


def shard_key(record: Mapping[str, Any], entity: DedupeEntity = "account") -> str:
    """A partition key that keeps most duplicates of a person on one partition: sorted name initials.

    It survives typos after the first letter, initials, middle initials and swapped first/last names,
    and does not depend on e-mail, phone or address. Records without both name parts get ``"_"``.
    See the module docs of :mod:`processors.dedupe` for what partitioning by it loses.
    """
    return initials_pair(extract(record, entity)) or "_"
