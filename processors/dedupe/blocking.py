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

Besides these built-in keys (``DedupeConfig.builtin_blocking``), the config declares **passes**
(``DedupeConfig.blocking``): each is a list of fields and how each is reduced (``nysiis`` / ``metaphone``
/ ``soundex`` phonetic codes, ``year`` of a date, ``initial``, ``tail`` (the letters after the first: it
survives a typo in the first letter), ``digits``, ``fold``, ``value``; ``unordered`` sorts the reduced parts,
so swapped fields share the key). The
defaults lean on neither e-mail nor phone: NYSIIS of surname and given name together, each with the
birth year, postcode with birth year, birth date with postcode, and a sorted-neighbourhood pass over
the names. Every ``identifier_fields`` entry is a pass of its own.

**Sorted neighbourhood, record at a time.** The batch method sorts all records by a name key and
compares each with its w neighbours of rank. In a stream a record's rank neighbours are the records
that happen to have arrived before it, so the pairs compared (and the clusters) would depend on the
arrival order, which must not decide anything here. The neighbourhood is therefore a range of the
sorted key space instead: every record whose key (folded surname then given name, letters only)
starts with the same ``prefix`` letters, i.e. one range scan of a sorted index of the keys. Any
arrival order then compares the same pairs, and the range is exactly a block key on the key's prefix,
so it lives in the ``blocks`` mapping with the same cap and nothing new to persist. It catches typos
past the prefix (``smithjonathan`` / ``smithjonahtan``) that change a phonetic code.

Stored keys are ``<kind>:<BLAKE2b digest>`` (see ``DedupeConfig.hash_block_keys``): a stored blocks table
then holds no e-mail, phone or birth date in clear text, and keys have a fixed, small size. The stream stores
no blocks (it derives them in memory from the records it persists), so its keys stay clear text there, unless
``block_key_secret`` is set (sealed state): then they are keyed digests in memory too.

Oversized blocks: a block holding ``max_block_size`` ids is *closed*. Later records neither join it nor
are compared with its members; the ids it holds stay (so a restart behaves the same). A key that common
(a placeholder e-mail, a shared office phone, a big city with a frequent name) does not identify anyone,
and the other keys of a record still find its real duplicates. The deduper reports closed-block hits per
record (``DedupeResult.closed_blocks``) so they can be counted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping
from functools import lru_cache
from typing import Any, Final

import jellyfish

from processors.dedupe.config import BlockingPass, BlockPart, DedupeConfig, DedupeEntity, KeyTransform
from processors.dedupe.features import (
    Features,
    feature_key,
    fold,
    initial,
    soundex,
    street_form,
)

_NOT_LETTERS: Final = str.maketrans("", "", "0123456789 ")  # what a folded text holds besides letters


def _letters(value: Any) -> str:
    return fold(str(value)).translate(_NOT_LETTERS)


def _phonetic(code: Callable[[str], str]) -> Callable[[Any], str]:
    @lru_cache(maxsize=1 << 15)  # names repeat: the code of each is computed once
    def coded(text: str) -> str:
        # Each word separately, so a double-barrelled or a middle name keeps its first word's code first.
        for word in fold(text).split():
            letters = word.translate(_NOT_LETTERS)
            if len(letters) > 1:
                return code(letters)
        return ""

    return lambda value: coded(str(value))


TRANSFORMS: Final[dict[KeyTransform, Callable[[Any], str]]] = {
    "value": lambda v: str(v).strip(),
    "fold": lambda v: fold(str(v)),
    "nysiis": _phonetic(jellyfish.nysiis),
    "metaphone": _phonetic(jellyfish.metaphone),
    "soundex": lambda v: soundex(str(v)),
    "initial": lambda v: initial(str(v)),
    "tail": lambda v: _letters(v)[1:],
    "year": lambda v: year if (year := str(v)[:4]).isdigit() else "",
    "digits": lambda v: "".join(c for c in str(v) if c.isdigit()),
}


def identifier_pass(field: str) -> BlockingPass:
    """The pass of an identifier field: its digits and letters, folded."""
    return BlockingPass(name=f"id_{field}"[:16], parts=(BlockPart(field=field, transform="fold"),))


class _Pass:
    """A blocking pass compiled for one entity: its parts' feature keys and reduce functions, looked up once."""

    __slots__ = ("name", "parts", "prefix", "unordered")

    def __init__(self, spec: BlockingPass, entity: DedupeEntity) -> None:
        self.name = spec.name
        self.parts = tuple((feature_key(p.field, entity), TRANSFORMS[p.transform]) for p in spec.parts)
        self.unordered = spec.unordered
        self.prefix = spec.prefix if spec.kind == "sorted_neighbourhood" else None

    def key(self, feats: Features) -> str | None:
        values = []
        for key, reduce in self.parts:
            value = feats.get(key)
            if value is None:
                return None
            reduced = reduce(value)
            if not reduced:
                return None
            values.append(reduced)
        return self.join(values)

    def join(self, values: list[str]) -> str | None:
        """The key of the pass's reduced parts (all non-empty); None when a key range has no letter."""
        if self.unordered:
            values.sort()
        if self.prefix is not None:
            letters = "".join(_letters(v) for v in values)
            if len(letters) < self.prefix:  # a key shorter than the range: the whole (short) key
                return f"{self.name}|{letters}|=" if letters else None
            return f"{self.name}|{letters[: self.prefix]}"
        return "|".join((self.name, *values))


def pass_key(feats: Features, spec: BlockingPass, entity: DedupeEntity) -> str | None:
    """The clear-text key of one pass (``name|part|part``), or None when a part is missing or empty."""
    return _Pass(spec, entity).key(feats)


def raw_block_keys(feats: Features, entity: DedupeEntity) -> list[str]:
    """The clear-text block keys of a feature dict (sorted, unique): ``kind|value|...``."""
    keys: set[str] = set()
    _builtin_keys(feats, entity, keys)
    return sorted(keys)


def _builtin_keys(feats: Features, entity: DedupeEntity, keys: set[str]) -> None:
    """Add the built-in block keys of a feature dict to ``keys``. (Runs for every record: calls inlined.)"""
    get = feats.get
    if email := get("em"):
        keys.add(f"e|{email}")
    if phone := get("ph"):
        keys.add(f"p|{phone}")
    first, last = get("fn"), get("ln")
    a, b = (fold(first)[:1] if first else ""), (fold(last)[:1] if last else "")  # initials_pair, inline
    pair = "" if not a or not b else a + b if a <= b else b + a
    if entity == "account":
        if pair and (birth := get("bd")):
            keys.add(f"b|{birth}|{pair}")
        if pair and (postal := get("pc")):
            keys.add(f"z|{get('co', '')}|{postal}|{pair}")
        city = get("ci")
        if city and first and last:  # no country: it is the field most often lost ("Untied States")
            keys.add(f"c|{fold(city)}|{soundex(last)}{a}")
        if pair and (street := get("st")):
            numbers: list[str] = []
            name = ""  # the longest word that is no number (the first of equals)
            for word in street_form(street).split():
                if word.isdigit():
                    numbers.append(word)
                elif len(word) > len(name):
                    name = word
            if numbers and name:
                numbers.sort()
                keys.add(f"s|{''.join(numbers)}|{soundex(name)}|{pair}")
    elif pair and (parent := get("pa")):
        keys.add(f"a|{parent}|{pair}")


def block_passes(config: DedupeConfig) -> tuple[BlockingPass, ...]:
    """The config's passes, then one per identifier field."""
    return (*config.blocking, *(identifier_pass(f) for f in config.identifier_fields))


class BlockKeyer:
    """Turns feature dicts into the (optionally hashed) block keys of the ``blocks`` table."""

    def __init__(self, config: DedupeConfig, *, hashed: bool | None = None) -> None:
        """``hashed``: digest the keys (default: ``config.hash_block_keys``); False for blocks that live in
        memory only, as the stream's do (derived from the records at each start, never stored anywhere)."""
        self.entity = config.entity
        self.hashed = config.hash_block_keys if hashed is None else hashed
        self.builtin = config.builtin_blocking
        self._passes = tuple(_Pass(spec, config.entity) for spec in block_passes(config))
        # Compiled for _raw, which runs for every record: each distinct (field, transform) part is reduced once
        # (the default passes share most of theirs), then the plain two-part passes are joined inline.
        parts: dict[tuple[str, KeyTransform], int] = {}
        for spec in block_passes(config):
            for p in spec.parts:
                parts.setdefault((feature_key(p.field, config.entity), p.transform), len(parts))
        self._parts = tuple((key, TRANSFORMS[transform]) for key, transform in parts)
        self._two: list[tuple[str, int, int]] = []
        self._other: list[tuple[_Pass, tuple[int, ...]]] = []
        for spec, compiled in zip(block_passes(config), self._passes, strict=True):
            at = tuple(parts[feature_key(p.field, config.entity), p.transform] for p in spec.parts)
            if compiled.prefix is None and not compiled.unordered and len(at) == 2:
                self._two.append((spec.name, *at))
            else:
                self._other.append((compiled, at))
        secret = config.block_key_secret
        # Keyed once: each key's digest starts from a copy (keying costs a compression per new hash object).
        key = secret.get_secret_value().encode() if secret is not None else b""
        self._keyed = hashlib.blake2b(digest_size=12, key=key)

    def raw_keys(self, feats: Features) -> list[str]:
        """The clear-text keys of all passes (sorted, unique)."""
        return sorted(self._raw(feats))

    def _raw(self, feats: Features) -> set[str]:
        keys: set[str] = set()
        if self.builtin:
            _builtin_keys(feats, self.entity, keys)
        get = feats.get
        # A missing value reduces to "" as an empty reduction does: either way the passes using it have no key.
        reduced = [reduce(value) if (value := get(key)) is not None else "" for key, reduce in self._parts]
        for name, i, j in self._two:
            if (a := reduced[i]) and (b := reduced[j]):
                keys.add(f"{name}|{a}|{b}")
        for spec, at in self._other:
            values = [reduced[i] for i in at]
            if all(values) and (key := spec.join(values)) is not None:
                keys.add(key)
        return keys

    def key_set(self, feats: Features) -> Collection[str]:
        """The record's block keys in no order: :meth:`keys` without its sort, for blocks kept in memory."""
        return self._raw(feats) if not self.hashed else self.keys(feats)

    def keys(self, feats: Features) -> list[str]:
        """The record's block keys, sorted: ``kind:<digest>`` (or clear text with ``hash_block_keys`` off)."""
        if not self.hashed:
            return self.raw_keys(feats)
        keyed, out = self._keyed, []
        for key in self._raw(feats):
            h = keyed.copy()
            h.update(key.encode())
            out.append(f"{key[: key.index('|')]}:{h.hexdigest()}")
        out.sort()
        return out


def shard_key(record: Mapping[str, Any], entity: DedupeEntity = "account") -> str:
    """A partition key that keeps most duplicates of a person on one partition: sorted name initials.

    It survives typos after the first letter, initials, middle initials and swapped first/last names,
    and does not depend on e-mail, phone or address. Records without both name parts get ``"_"``.
    See the module docs of :mod:`processors.dedupe` for what partitioning by it loses.
    """
    # initials_pair of the record's features, read from the record itself (both entities name them alike)
    a, b = initial(record.get("first_name")), initial(record.get("last_name"))
    if not a or not b:
        return "_"
    return a + b if a <= b else b + a
