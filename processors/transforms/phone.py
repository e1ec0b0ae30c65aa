"""Phone numbers to E.164 with the semantics of ``phonenumbers``, at a fraction of its cost.

``phonenumbers.parse`` + ``is_valid_number`` cost 25-50 µs a number, more than the whole per-record
budget. :func:`parse_e164` first tries a fast path that mirrors the library for plainly written numbers
(digits, spaces and ``( ) . -``, optional leading ``+``) and checks validity with the library's own
metadata patterns, compiled once. The fast path only ever *accepts*: anything it is unsure of, and every
invalid number, is decided by the library itself. ``test_transforms_contact.py`` compares both paths.
It also tells a vanity number (letters for digits) apart, so the transform can flag or reject it.
"""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumberFormat

_PLAIN = re.compile(r"\+?[0-9 ()./\-]+")
_PUNCTUATION = str.maketrans("", "", "+ ()./-")  # all a _PLAIN text holds besides digits
_MAX_INPUT = 250  # the library's _MAX_INPUT_STRING_LENGTH
_NSN_LENGTHS = range(2, 18)  # the library's _MIN/_MAX_LENGTH_FOR_NSN

# The number types is_valid_number accepts, in the library's order (_number_type_helper).
_TYPE_DESCS = (
    "premium_rate", "toll_free", "shared_cost", "voip", "personal_number", "pager", "uan", "voicemail",
    "fixed_line", "mobile",
)  # fmt: skip

_Desc = tuple[frozenset[int], re.Pattern[str]]


def _desc(number_desc: object) -> _Desc | None:
    pattern = getattr(number_desc, "national_number_pattern", None)
    if not pattern:
        return None
    lengths = frozenset(getattr(number_desc, "possible_length", ()) or ())
    return lengths, re.compile(pattern)


def _matches(desc: _Desc | None, national: str) -> bool:
    if desc is None:
        return False
    lengths, pattern = desc
    return (not lengths or len(national) in lengths) and pattern.fullmatch(national) is not None


class _Region:
    """One region's metadata, precompiled: what parsing and validation of its numbers need."""

    __slots__ = (
        "_any_type",
        "code",
        "country_code",
        "country_code_text",
        "general",
        "idd",
        "leading",
        "national_prefix",
        "simple_prefix",
        "types",
    )  # fmt: skip

    def __init__(self, code: str, metadata: PhoneMetadata) -> None:
        self.code = code
        self.country_code: int = metadata.country_code or 0
        self.country_code_text = str(self.country_code)
        self.idd = re.compile(metadata.international_prefix) if metadata.international_prefix else None
        npp = metadata.national_prefix_for_parsing
        self.national_prefix = re.compile(npp) if npp else None
        self.leading = re.compile(metadata.leading_digits) if metadata.leading_digits else None
        self.general = _desc(metadata.general_desc)
        self.types = tuple(d for d in (_desc(getattr(metadata, name, None)) for name in _TYPE_DESCS) if d)
        self._any_type: dict[int, re.Pattern[str] | None] = {}
        # Carrier codes and prefix transform rules (AR, BR...) are left to the library.
        self.simple_prefix = not metadata.national_prefix_transform_rule and not (
            self.national_prefix is not None and self.national_prefix.groups
        )

    def valid(self, national: str) -> bool:
        """The library's ``_number_type_helper(national, metadata) != UNKNOWN``.

        That is: the general description matches and so does one of the number types. The types whose
        possible lengths admit this length are joined into one alternation (fullmatch of ``a|b`` is
        fullmatch of ``a`` or of ``b``), one regex call instead of ten.
        """
        if not _matches(self.general, national):
            return False
        size = len(national)
        try:
            any_type = self._any_type[size]
        except KeyError:
            alternatives = [f"(?:{p.pattern})" for lengths, p in self.types if not lengths or size in lengths]
            any_type = re.compile("|".join(alternatives)) if alternatives else None
            self._any_type[size] = any_type
        return any_type is not None and any_type.fullmatch(national) is not None


@lru_cache(maxsize=512)
def _region(code: str) -> _Region | None:
    metadata = PhoneMetadata.metadata_for_region(code, None)
    return None if metadata is None else _Region(code, metadata)


def is_valid(country_code: int, national: str, hint: _Region | None = None) -> bool:
    """``phonenumbers.is_valid_number`` for a number without Italian leading zeros.

    The library finds the number's region – the first of the country code's regions whose leading
    digits match, or (without leading digits) for which the number is valid – and validates against it.
    A region that claims the number by validity makes the answer True, so when the ``hint`` region (the
    record's country) finds it valid, only the leading-digit regions listed before it can change the
    answer; that saves checking e.g. the US patterns for every Canadian number.
    """
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(country_code)
    if not regions:
        return False
    if len(regions) == 1:
        only = _region(regions[0])
        return only is not None and only.country_code == country_code and only.valid(national)
    if hint is not None and hint.country_code == country_code and hint.valid(national):
        for code in regions:
            if code == hint.code:
                return True
            candidate = _region(code)
            if candidate is not None and candidate.leading is not None and candidate.leading.match(national):
                return candidate.valid(national)
        return True
    for code in regions:
        candidate = _region(code)
        if candidate is None:
            continue
        if candidate.leading is not None:
            if candidate.leading.match(national):
                return candidate.valid(national)
        elif candidate.valid(national):
            return True
    return False


def _split_country_code(digits: str) -> tuple[int, str] | None:
    if digits[:1] in ("", "0"):
        return None
    for size in (1, 2, 3):
        code = int(digits[:size])
        if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            return code, digits[size:]
    return None


def fast_e164(text: str, region: str | None) -> str | None:
    """E.164 of a plainly written valid number, or None when the library has to decide.

    Mirrors ``phonenumbers.parse``: ``+`` or the region's international (IDD) prefix, then the country
    code; else the default region's country code; then the national prefix of the number's region.
    """
    if len(text) > _MAX_INPUT or _PLAIN.fullmatch(text) is None:
        return None
    digits = text.translate(_PUNCTUATION)
    home = _region(region) if region is not None else None
    international: str | None = None
    if text.startswith("+"):
        international = digits
    elif home is None:
        return None
    elif home.idd is not None and (idd := home.idd.match(digits)) is not None:
        international = digits[idd.end() :]
        if international[:1] == "0":
            return None  # the library does not read this as an IDD either
    elif digits.startswith(home.country_code_text):
        # Perhaps a country code without "+" (1-212-555-0134). The library guesses; both of its guesses
        # give the same national number when the rest has no national prefix and stripping the national
        # prefix from the whole gives the rest (NANP: the country code is the trunk prefix).
        rest = digits[len(home.country_code_text) :]
        trunk = home.national_prefix
        prefix = trunk.match(digits) if trunk is not None else None
        if trunk is None or prefix is None or digits[prefix.end() :] != rest or trunk.match(rest):
            return None
        digits = rest
    owner: _Region | None
    if international is None:
        owner, country_code, national = home, 0, digits
        if owner is not None:
            country_code = owner.country_code
    else:
        split = _split_country_code(international)
        if split is None:
            return None
        country_code, national = split
        owner = _region(phonenumbers.region_code_for_country_code(country_code))
    if owner is None or not owner.simple_prefix:
        return None
    if owner.national_prefix is not None and (prefix := owner.national_prefix.match(national)):
        # The library strips it too whenever the rest is a valid number (checked below).
        national = national[prefix.end() :]
    if len(national) not in _NSN_LENGTHS or national[0] == "0" or not is_valid(country_code, national, home):
        return None
    return f"+{country_code}{national}"


def library_e164(text: str, region: str | None) -> str | None:
    """E.164 via ``phonenumbers.parse`` + ``is_valid_number``; None if not a valid number."""
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return str(phonenumbers.format_number(number, PhoneNumberFormat.E164))


def to_e164(text: str, region: str | None) -> str | None:
    """E.164 of ``text`` read with default ``region``, or None if it is not a valid number."""
    return parse_e164(text, region)[0]


@lru_cache(maxsize=16384)
def parse_e164(text: str, region: str | None) -> tuple[str | None, bool]:
    """``(E.164 or None if not a valid number, vanity)``.

    ``vanity``: the number is written with letters (``030 CALL NOW``, ``1-800-FLOWERS``) that the library
    turned into keypad digits (ITU E.161; it does so for three or more letters, the extension aside:
    ``phonenumbers.is_alpha_number``). The fast path takes digits and punctuation only, so a number it
    accepts is never a vanity number.
    """
    fast = fast_e164(text, region)
    if fast is not None:
        return fast, False
    e164 = library_e164(text, region)
    return e164, e164 is not None and phonenumbers.is_alpha_number(text)
