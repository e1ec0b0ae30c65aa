"""Valid phone numbers without calling phonenumbers per record.

Once per country we sample national significant numbers until ``phonenumbers`` accepts them, keep
their leading digits as a *prefix* and randomise only the trailing digits. A prefix is kept only if
several random completions are valid numbers of that country with the same grouping, and each written
format (national, ``+1 555 123 4567``, ``0049 30 1234567``...) is kept only if it parses back to the
same E.164 number. Per record a number is then a prefix plus random digits put into a format template:
a string operation, no parsing.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import phonenumbers
from phonenumbers import PhoneNumber, PhoneNumberFormat, PhoneNumberType

_EXAMPLE_TYPES = (PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE)
_GROUP_SPLIT = re.compile(r"[ \-]")
_CHECK_COMPLETIONS = 8


@dataclass(frozen=True, slots=True)
class PhonePrefix:
    """Numbers ``+<country_code><prefix><tail random digits>``, with ``{}`` templates per tail digit."""

    country_code: int
    prefix: str
    tail: int
    national: str
    variants: tuple[str, ...]
    international: tuple[str, ...]

    def e164(self, digits: str) -> str:
        return f"+{self.country_code}{self.prefix}{digits}"


@dataclass(frozen=True, slots=True)
class PhonePlan:
    """The phone numbers of one country: valid prefixes and strings that are not valid numbers."""

    region: str
    prefixes: tuple[PhonePrefix, ...]
    invalid: tuple[str, ...]


def _template(formatted: str, tail: int) -> str:
    """Replace the last ``tail`` digits of ``formatted`` by ``{}`` placeholders."""
    chars = list(formatted.replace("{", "{{").replace("}", "}}"))
    left = tail
    for i in range(len(chars) - 1, -1, -1):
        if left and chars[i].isdigit():
            chars[i] = "{}"
            left -= 1
    return "".join(chars)


def _written_forms(num: PhoneNumber) -> list[str]:
    """The ways a legacy CRM may hold ``num``: national first, then the alternatives."""
    national = phonenumbers.format_number(num, PhoneNumberFormat.NATIONAL)
    intl = phonenumbers.format_number(num, PhoneNumberFormat.INTERNATIONAL)
    cc = str(num.country_code)
    groups = _GROUP_SPLIT.split(intl[len(cc) + 2 :])
    nsn = "".join(groups)
    head, rest = groups[0], groups[1:]
    forms = [national, intl, "+" + cc + " " + " ".join(groups), "+" + cc + nsn]
    if cc == "1":
        forms += [
            "-".join(groups),
            ".".join(groups),
            nsn,
            "1-" + "-".join(groups),
            "+1 (" + head + ") " + "-".join(rest),
            "+1-" + "-".join(groups),
            "+1." + ".".join(groups),
        ]
    else:
        forms += [
            "0" + nsn,
            "0" + "-".join(groups),
            "0" + ".".join(groups),
            "00" + cc + " " + " ".join(groups),
            "(0" + head + ") " + " ".join(rest),
            "0" + head + "/" + "".join(rest),
            "+" + cc + " (0)" + head + " " + " ".join(rest),
            "+" + cc + "-" + "-".join(groups),
        ]
    return list(dict.fromkeys(forms))


def _parses_to(text: str, region: str | None, e164: str) -> bool:
    try:
        num = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return False
    return bool(phonenumbers.is_valid_number(num)) and (phonenumbers.format_number(num, PhoneNumberFormat.E164) == e164)


def _is_valid(text: str, region: str | None) -> bool:
    try:
        return bool(phonenumbers.is_valid_number(phonenumbers.parse(text, region)))
    except phonenumbers.NumberParseException:
        return False


def _groups(num: PhoneNumber) -> list[int]:
    intl = phonenumbers.format_number(num, PhoneNumberFormat.INTERNATIONAL)
    return [len(g) for g in _GROUP_SPLIT.split(intl)]


def _check_prefix(region: str, cc: int, prefix: str, tail: int, rng: random.Random) -> PhonePrefix | None:
    nums: list[PhoneNumber] = []
    for _ in range(_CHECK_COMPLETIONS):
        digits = "".join(rng.choices("0123456789", k=tail))
        num = phonenumbers.parse(f"+{cc}{prefix}{digits}", None)
        if not phonenumbers.is_valid_number_for_region(num, region):
            return None
        nums.append(num)
    if len({tuple(_groups(n)) for n in nums}) != 1:
        return None
    sample = nums[0]
    if phonenumbers.number_type(sample) not in (*_EXAMPLE_TYPES, PhoneNumberType.FIXED_LINE_OR_MOBILE):
        return None
    e164 = phonenumbers.format_number(sample, PhoneNumberFormat.E164)
    forms = _written_forms(sample)
    if not _parses_to(forms[0], region, e164):
        return None
    variants = tuple(_template(f, tail) for f in forms[1:] if _parses_to(f, region, e164))
    international = tuple(_template(f, tail) for f in forms if _parses_to(f, None, e164))
    if not variants or not international:
        return None
    return PhonePrefix(cc, prefix, tail, _template(forms[0], tail), variants, international)


def _invalid_strings(region: str, valid: list[PhoneNumber], rng: random.Random) -> tuple[str, ...]:
    candidates = ["12345", "000-000-0000", "0000", "123", "tel. unknown", "n.a.", "999 999"]
    for num in valid[:20]:
        national = phonenumbers.format_number(num, PhoneNumberFormat.NATIONAL)
        candidates.append(national[: max(3, len(national) - rng.randint(4, 6))])
    return tuple(dict.fromkeys(c for c in candidates if not _is_valid(c, region) and not _is_valid(c, None)))


def build_phone_plan(region: str, rng: random.Random, n_prefixes: int = 80) -> PhonePlan:
    """Sample up to ``n_prefixes`` checked prefixes of ``region`` (e.g. ``"DE"``)."""
    cc = phonenumbers.country_code_for_region(region)
    lengths = sorted(
        {
            len(phonenumbers.national_significant_number(ex))
            for t in _EXAMPLE_TYPES
            if (ex := phonenumbers.example_number_for_type(region, t)) is not None
        }
    )
    prefixes: dict[str, PhonePrefix] = {}
    valid: list[PhoneNumber] = []
    attempts = 0
    while len(prefixes) < n_prefixes and attempts < 200 * n_prefixes:
        attempts += 1
        length = rng.choice(lengths)
        nsn = str(rng.randint(1, 9)) + "".join(rng.choices("0123456789", k=length - 1))
        num = phonenumbers.parse(f"+{cc}{nsn}", None)
        if not phonenumbers.is_valid_number_for_region(num, region):
            continue
        valid.append(num)
        tail = 6 if length >= 10 else 4
        prefix = nsn[:-tail]
        if prefix in prefixes:
            continue
        checked = _check_prefix(region, cc, prefix, tail, rng)
        if checked is not None:
            prefixes[prefix] = checked
    ordered = tuple(prefixes[p] for p in sorted(prefixes))
    if not ordered:
        raise RuntimeError(f"no valid phone prefixes found for {region}")
    return PhonePlan(region, ordered, _invalid_strings(region, valid, rng))
