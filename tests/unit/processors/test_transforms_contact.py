"""email and phone_e164, and their fast paths checked against email-validator and phonenumbers."""

from __future__ import annotations

import random
from types import MappingProxyType

import email_validator
import phonenumbers
import pytest
from phonenumbers import PhoneNumberFormat

from processors.exceptions import FieldInvalid
from processors.transforms import EMPTY_CONTEXT, ReferenceData, TransformContext
from processors.transforms.contact import _simple_email_ok, email, phone_e164
from processors.transforms.phone import fast_e164, library_e164, to_e164

pytestmark = pytest.mark.unit

# --- email ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("john.doe@example.com", "john.doe@example.com"),
        ("John.Doe@Example.COM", "john.doe@example.com"),
        ("JOHN.DOE@EXAMPLE.COM", "john.doe@example.com"),
        ("  john.doe@example.com ", "john.doe@example.com"),
        ("a+tag@mail.example.co.uk", "a+tag@mail.example.co.uk"),
        ("o'brien@example.org", "o'brien@example.org"),  # valid, only the slow path knows it
    ],
)
def test_email_valid(raw: str, clean: str) -> None:
    assert email(raw) == clean


@pytest.mark.parametrize(
    "raw",
    [
        "john.doeexample.com",  # no @
        "john@@example.com",
        "john..doe@example.com",
        "john@example,com",
        "john@example",  # no dot in the domain
        "john@localhost",
        "john@host.test",
        "john@-example.com",
        "@example.com",
        "john doe@example.com",
    ],
)
def test_email_invalid(raw: str) -> None:
    with pytest.raises(FieldInvalid) as err:
        email(raw)
    assert err.value.rule == "email_format"
    assert err.value.suffix == "invalid"
    assert raw not in str(err.value) and raw.lower() not in str(err.value)


def test_email_missing_is_none() -> None:
    assert email(None) is None
    assert email("   ") is None


def _validator_accepts(address: str) -> bool:
    try:
        email_validator.validate_email(address, check_deliverability=False)
    except email_validator.EmailNotValidError:
        return False
    return True


def test_email_fast_path_only_accepts_what_email_validator_accepts() -> None:
    rng = random.Random(3)
    alphabet = "ab.-_+@0x1'"
    samples = [
        "a@b.co", "a.b@c.de", "a-@b.co", "-a@b.co", "a@b-.co", "a@b--c.co", "a@xn--bcher-kva.example",
        "a@b.c0m", "a@b.c", "a@b.onion", "a@x.local", "a@a.arpa", "a@b.invalid", "a@127.0.0.1",
        "a" * 64 + "@b.co", "a" * 65 + "@b.co", "a@" + "b" * 63 + ".co", "a@" + "b" * 64 + ".co",
        "a@" + ".".join(["b" * 60] * 5) + ".co", ".a@b.co", "a.@b.co", "a@.b.co", "a@b..co",
    ]  # fmt: skip
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(3, 14))) + ".com" for _ in range(3000)]
    for address in samples:
        if _simple_email_ok(address):
            assert _validator_accepts(address), address


# --- phone ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        ("(212) 555-0134", "US", "+12125550134"),
        ("212-555-0134", "US", "+12125550134"),
        ("212.555.0134", "US", "+12125550134"),
        ("1-212-555-0134", "US", "+12125550134"),
        ("+1 212 555 0134", None, "+12125550134"),
        ("+1 (212) 555-0134", "DE", "+12125550134"),  # international wins over the region
        ("(416) 555-0199", "CA", "+14165550199"),
        ("+1 416 555 0199", "CA", "+14165550199"),
        ("030 1234567", "DE", "+49301234567"),
        ("0049 30 1234567", "DE", "+49301234567"),
        ("+49 30 1234567", None, "+49301234567"),
        ("+49 (0)30 1234567", "DE", "+49301234567"),
        ("030/1234567", "DE", "+49301234567"),
        ("+44 20 7946 0958", None, "+442079460958"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("0044 20 7946 0958", "GB", "+442079460958"),
        ("01 42 68 53 00", "FR", "+33142685300"),
        ("+33 1 42 68 53 00", "FR", "+33142685300"),
        ("06 12 34 56 78", "FR", "+33612345678"),
        ("020 123 4567", "NL", "+31201234567"),
        ("06-12345678", "NL", "+31612345678"),
        ("+31 6 12345678", None, "+31612345678"),
    ],
)
def test_phone_valid(raw: str, region: str | None, e164: str) -> None:
    assert phone_e164(raw, EMPTY_CONTEXT, region=region) == e164


@pytest.mark.parametrize(
    ("raw", "region"),
    [
        ("(555) 123-4567", "US"),  # 555 is not a valid area code
        ("(212) 555-0134", None),  # national number without a country
        ("12345", "US"),
        ("000-000-0000", "US"),
        ("tel. unknown", "DE"),
        ("n.a.", "GB"),
        ("030 12", "DE"),
        ("+99 123 456", None),
    ],
)
def test_phone_invalid(raw: str, region: str | None) -> None:
    with pytest.raises(FieldInvalid) as err:
        phone_e164(raw, EMPTY_CONTEXT, region=region)
    assert err.value.rule == "phone_format"
    assert err.value.suffix == "invalid"
    assert raw not in str(err.value)


def test_phone_region_from_the_cleaned_country_field() -> None:
    ctx = TransformContext(MappingProxyType({}), MappingProxyType({"country": "GB"}), ReferenceData())
    assert phone_e164("020 7946 0958", ctx, region_from="country") == "+442079460958"
    no_country = TransformContext(MappingProxyType({}), MappingProxyType({"country": None}), ReferenceData())
    with pytest.raises(FieldInvalid):
        phone_e164("020 7946 0958", no_country, region_from="country")
    assert phone_e164("020 7946 0958", no_country, region_from="country", region="GB") == "+442079460958"


def test_phone_missing_is_none() -> None:
    assert phone_e164(None) is None
    assert phone_e164("  ") is None


def _written_forms(number: phonenumbers.PhoneNumber) -> list[str]:
    national = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
    intl = phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    cc = str(number.country_code)
    nsn = e164[len(cc) + 1 :]
    groups = intl[len(cc) + 2 :].replace("-", " ").split()
    return [
        national, intl, e164, "-".join(groups), ".".join(groups), nsn, "0" + nsn, "00" + cc + " " + nsn,
        "011 " + cc + " " + nsn, "1-" + "-".join(groups), f"+{cc} (0){nsn}", f"+{cc}-{'-'.join(groups)}",
        f"{cc} {nsn}", f"({groups[0]}) {' '.join(groups[1:])}", nsn[:-2], nsn + "12", "+" + cc + nsn[:-3],
        f"0{groups[0]}/{''.join(groups[1:])}", f"{cc}-{'-'.join(groups)}", f"{cc}0{nsn}", f"{cc}{cc}{nsn}",
        f"{groups[0]}/{''.join(groups[1:])}", f"+{cc}/{nsn}", f"1{nsn}", f"11{nsn}",
    ]  # fmt: skip


@pytest.mark.parametrize("region", ["US", "CA", "DE", "GB", "FR", "NL", "IT", "CH", "AU", "BR", "AR"])
def test_phone_fast_path_agrees_with_phonenumbers(region: str) -> None:
    rng = random.Random(region)
    cc = phonenumbers.country_code_for_region(region)
    numbers: list[phonenumbers.PhoneNumber] = []
    for kind in (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE):
        example = phonenumbers.example_number_for_type(region, kind)
        if example is None:
            continue
        nsn = phonenumbers.national_significant_number(example)
        for _ in range(15):  # random tails: valid or not, the library is the judge
            tail = "".join(rng.choices("0123456789", k=4))
            numbers.append(phonenumbers.parse(f"+{cc}{nsn[:-4]}{tail}", None))
    checked = accepted = 0
    for number in numbers:
        for text in _written_forms(number):
            for default_region in (region, None, "US", "DE"):
                fast = fast_e164(text, default_region)
                slow = library_e164(text, default_region)
                checked += 1
                if fast is not None:
                    accepted += 1
                    assert fast == slow, (text, default_region)
                assert to_e164(text, default_region) == slow, (text, default_region)
    assert checked > 500
    if region in ("US", "DE", "GB", "FR", "NL"):
        assert accepted > checked // 10  # the fast path does take the plain forms
