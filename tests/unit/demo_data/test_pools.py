"""Pooled values are canonical, and every pooled phone prefix makes valid numbers in every spelling."""

from __future__ import annotations

import contextlib
import random
import re

import phonenumbers
import pytest

from crmflow.demo_data.pools import POSTAL_PATTERNS, build_pools, name_case

pytestmark = pytest.mark.unit

_ABBREVIATION = re.compile(r"\b(?:st|ave|rd|blvd|dr|ln|str)\b", re.IGNORECASE)


def test_pools_are_deterministic_and_seeded() -> None:
    assert build_pools(3) == build_pools.__wrapped__(3)
    assert build_pools(3).countries[0].first_names != build_pools(4).countries[0].first_names


def test_pooled_values_are_canonical() -> None:
    for pool in build_pools(3).countries:
        for n in (*pool.first_names, *pool.last_names):
            assert name_case(n.text) == name_case(n.text.upper()) == name_case(n.text.lower()) == n.text
            assert re.fullmatch(r"[a-z]{2,}", n.ascii)
        for city, postal in pool.places:
            assert name_case(city.lower()) == city
            assert POSTAL_PATTERNS[pool.code].match(postal)
        for street in pool.streets:
            assert not _ABBREVIATION.search(street.template)
            assert street.template.count("{}") == 1
            for short in street.abbreviated:
                assert _ABBREVIATION.search(short)
        assert all('"' not in v and "\\" not in v for v in pool.job_titles)


def test_phone_prefixes_make_valid_numbers_in_every_spelling() -> None:
    rng = random.Random(9)
    for pool in build_pools(3).countries:
        region = pool.code
        for prefix in pool.phones.prefixes:
            for _ in range(5):
                digits = "".join(rng.choices("0123456789", k=prefix.tail))
                e164 = prefix.e164(digits)
                number = phonenumbers.parse(e164, None)
                assert phonenumbers.is_valid_number_for_region(number, region), e164
                for template in (prefix.national, *prefix.variants):
                    parsed = phonenumbers.parse(template.format(*digits), region)
                    assert phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) == e164
                for template in prefix.international:
                    parsed = phonenumbers.parse(template.format(*digits), None)
                    assert phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) == e164
        for bad in pool.phones.invalid:
            for r in (region, None):
                with contextlib.suppress(phonenumbers.NumberParseException):
                    assert not phonenumbers.is_valid_number(phonenumbers.parse(bad, r))
