"""Seeded pools of realistic values, built once per run from Faker and phonenumbers.

Calling Faker per record would cost more than everything else together, so each country gets pools of
names, streets, (city, postal code) pairs, job titles and phone prefixes once; records then sample from
them with ``random.Random``. Every pooled value is already *canonical*: the contract's cleansing rules
leave it unchanged (name case is the identity on names and cities, streets contain no abbreviation,
postal codes match their country's pattern), so the generator's truth is the pooled value itself.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Final

from crmflow.demo_data.phones import PhonePlan, build_phone_plan

if TYPE_CHECKING:  # imported where the pools are built: every CLI process imports this module, few build pools
    from faker import Faker

_NAME_PARTS = re.compile(r"([ \-'])")
_NAME_CHARS = re.compile(r"^[^\W\d_]+(?:[-'][^\W\d_]+)*$")
_CITY_CHARS = re.compile(r"^[^\W\d_]+(?:[ \-'][^\W\d_]+)*$")
_ABBREVIATION_WORD = re.compile(r"\b(?:st|ave|rd|blvd|dr|ln|str)\b", re.IGNORECASE)
_UNSAFE = re.compile(r"[\"\r\n\t]")

#: Canonical street words and the abbreviations the cleansing expands back (``Str`` only in DE).
ABBREVIATIONS: Final[dict[str, tuple[str, ...]]] = {
    "Street": ("St", "St.", "ST", "st."),
    "Avenue": ("Ave", "Ave.", "AVE"),
    "Road": ("Rd", "Rd.", "RD"),
    "Boulevard": ("Blvd", "Blvd."),
    "Drive": ("Dr", "Dr."),
    "Lane": ("Ln", "Ln."),
}
_DE_ABBREVIATIONS: Final[dict[str, tuple[str, ...]]] = {"Straße": ("Str.", "Str", "str.")}

POSTAL_PATTERNS: Final[dict[str, re.Pattern[str]]] = {
    "US": re.compile(r"^\d{5}(-\d{4})?$"),
    "CA": re.compile(r"^[A-Z]\d[A-Z] \d[A-Z]\d$"),
    "DE": re.compile(r"^\d{5}$"),
    "FR": re.compile(r"^\d{5}$"),
    "NL": re.compile(r"^\d{4} [A-Z]{2}$"),
    # Strict Royal Mail form, so the code also passes any looser outward/inward pattern.
    "GB": re.compile(
        r"^[A-PR-UWYZ](?:\d{1,2}|[A-HK-Y]\d{1,2}|\d[A-HJKPS-UW]|[A-HK-Y]\d[ABEHMNPRV-Y]) "
        r"\d[ABD-HJLNP-UW-Z]{2}$"
    ),
}


def name_case(value: str) -> str:
    """The contract's name case: first letter of each word upper, the rest lower (`-`, `'` split)."""
    return "".join(part[:1].upper() + part[1:].lower() for part in _NAME_PARTS.split(value))


def ascii_fold(value: str) -> str:
    """Lower-case ASCII letters of ``value`` (accents dropped), for e-mail local parts."""
    folded = unicodedata.normalize("NFKD", value.lower())
    return "".join(c for c in folded if "a" <= c <= "z")


@dataclass(frozen=True, slots=True)
class Name:
    text: str
    ascii: str


@dataclass(frozen=True, slots=True)
class Street:
    """A street as a ``{}`` template for the house number, with abbreviated spellings of it."""

    template: str
    abbreviated: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CountryPool:
    code: str
    region: str
    currency: str
    first_names: tuple[Name, ...]
    last_names: tuple[Name, ...]
    streets: tuple[Street, ...]
    max_house_number: int
    places: tuple[tuple[str, str], ...]
    job_titles: tuple[str, ...]
    phones: PhonePlan
    spellings: tuple[str, ...]
    unknown_spellings: tuple[str, ...]
    email_domains: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Pools:
    countries: tuple[CountryPool, ...]
    country_weights: tuple[float, ...]
    products: tuple[str, ...]
    subjects: tuple[str, ...]
    statuses: tuple[str, ...]
    priorities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Locale:
    code: str
    locale: str
    region: str
    currency: str
    weight: float
    spellings: tuple[str, ...]
    unknown: tuple[str, ...]
    suffixes: tuple[str, ...]


_LOCALES: Final = (
    _Locale(
        "US",
        "en_US",
        "NA",
        "USD",
        0.35,
        ("US", "us", "USA", "usa", "United States", "UNITED STATES", "united states"),
        ("Untied States", "U.S.A", "Unted States"),
        ("Street", "Avenue", "Road", "Boulevard", "Drive", "Lane", "Court", "Way", "Place"),
    ),
    _Locale(
        "CA",
        "en_CA",
        "NA",
        "CAD",
        0.10,
        ("CA", "ca", "Canada", "CANADA", "canada"),
        ("Canda", "Cananda"),
        ("Street", "Avenue", "Road", "Boulevard", "Drive", "Lane", "Crescent", "Way"),
    ),
    _Locale(
        "DE",
        "de_DE",
        "EU",
        "EUR",
        0.20,
        ("DE", "de", "Germany", "Deutschland", "GERMANY", "deutschland"),
        ("Germny", "Deutchland", "Duetschland"),
        ("Straße", "Allee", "Weg", "Platz", "Ring"),
    ),
    _Locale("FR", "fr_FR", "EU", "EUR", 0.12, ("FR", "fr", "France", "FRANCE", "france"), ("Frnace", "Fance"), ()),
    _Locale(
        "NL",
        "nl_NL",
        "EU",
        "EUR",
        0.08,
        ("NL", "nl", "Netherlands", "NETHERLANDS", "netherlands"),
        ("Netherlnds", "Nehterlands"),
        (),
    ),
    _Locale(
        "GB",
        "en_GB",
        "UK",
        "GBP",
        0.15,
        ("GB", "gb", "UK", "uk", "United Kingdom", "UNITED KINGDOM"),
        ("Unted Kingdom", "Untied Kingdom"),
        ("Street", "Road", "Lane", "Avenue", "Drive", "Close", "Gardens", "Crescent", "Way"),
    ),
)

_PRODUCT_FAMILIES: Final = (
    "Starter Plan",
    "Pro Plan",
    "Enterprise Plan",
    "Support Package",
    "Training Day",
    "Onboarding Service",
    "Storage Add-on",
    "Analytics Module",
    "Mobile Licence",
    "API Access",
    "Hardware Kit",
    "Consulting Hours",
)
_SUBJECTS: Final = (
    "Cannot log in",
    "Invoice question",
    "Refund request",
    "Address change",
    "Password reset",
    "Order not delivered",
    "Wrong amount charged",
    "Cancel subscription",
    "Upgrade plan",
    "Data export request",
    "Technical problem",
    "Feature request",
    "Complaint about service",
    "Update payment details",
    "Question about contract",
    "Duplicate invoice, please check",
)
_STATUSES: Final = ("Open", "Pending", "Resolved", "Closed")
_PRIORITIES: Final = ("Low", "Medium", "High", "Urgent")


def _is_canonical_name(name: str) -> bool:
    return (
        bool(_NAME_CHARS.match(name))
        and name_case(name) == name
        and name_case(name.upper()) == name
        and name_case(name.lower()) == name
        and len(ascii_fold(name)) >= 2
    )


def _is_canonical_city(city: str) -> bool:
    return bool(_CITY_CHARS.match(city)) and all(name_case(v) == city for v in (city, city.upper(), city.lower()))


def _is_canonical_text(text: str) -> bool:
    return not _UNSAFE.search(text) and " ".join(text.split()) == text and 0 < len(text) <= 60


def _normalise_postal(country: str, raw: str) -> str:
    compact = raw.replace(" ", "").upper()
    if country == "CA":
        return f"{compact[:3]} {compact[3:]}"
    if country == "NL":
        return f"{compact[:4]} {compact[4:]}"
    return raw.upper()


def _unique(make: Callable[[], str], n: int, keep: Callable[[str], bool]) -> tuple[str, ...]:
    return tuple(sorted({v for v in (make() for _ in range(n)) if keep(v)}))


def _street(template: str, word: str, abbreviations: dict[str, tuple[str, ...]]) -> Street:
    short = abbreviations.get(word, ())
    return Street(template, tuple(template.replace(word, a, 1) for a in short))


def _streets(loc: _Locale, fake: Faker, rng: random.Random, cities: tuple[str, ...]) -> tuple[Street, ...]:
    out: list[Street] = []
    if loc.code in ("US", "CA", "GB"):
        roots = _unique(fake.last_name, 400, _is_canonical_name) + _unique(fake.first_name, 200, _is_canonical_name)
        for root in roots:
            word = rng.choice(loc.suffixes)
            out.append(_street(f"{{}} {root} {word}", word, ABBREVIATIONS))
    elif loc.code == "DE":
        for city in cities:
            if city.isalpha() and not city.endswith("e"):
                word = rng.choice(loc.suffixes)
                out.append(_street(f"{city}er {word} {{}}", word, _DE_ABBREVIATIONS))
        out += [Street(f"{s} {{}}", ()) for s in _unique(fake.street_name, 300, _is_canonical_text)]
    elif loc.code == "FR":
        for s in _unique(fake.street_name, 400, _is_canonical_text):
            first, _, rest = s.partition(" ")
            word = first[:1].upper() + first[1:]
            out.append(_street(f"{{}} {word} {rest}", word, ABBREVIATIONS))
    else:
        out += [Street(f"{s} {{}}", ()) for s in _unique(fake.street_name, 400, _is_canonical_text)]
    return tuple(s for s in out if _is_canonical_text(s.template) and not _ABBREVIATION_WORD.search(s.template))


def _country_pool(loc: _Locale, seed: int) -> CountryPool:
    from faker import Faker

    fake = Faker(loc.locale)
    fake.seed_instance(seed)
    rng = random.Random(f"{seed}-{loc.code}")
    firsts = _unique(fake.first_name, 1500, _is_canonical_name)
    lasts = _unique(fake.last_name, 1500, _is_canonical_name)
    pattern = POSTAL_PATTERNS[loc.code]
    places: dict[str, str] = {}
    for _ in range(800):
        city, postal = fake.city(), _normalise_postal(loc.code, fake.postcode())
        if _is_canonical_city(city) and pattern.match(postal):
            places.setdefault(city, postal)
    cities = tuple(sorted(places))
    domains = ("example.com", "example.org", "example.net", "mail.example.com", f"{loc.code.lower()}.example.net")
    return CountryPool(
        code=loc.code,
        region=loc.region,
        currency=loc.currency,
        first_names=tuple(Name(n, ascii_fold(n)) for n in firsts),
        last_names=tuple(Name(n, ascii_fold(n)) for n in lasts),
        streets=_streets(loc, fake, rng, cities),
        max_house_number=9999 if loc.region == "NA" else 199,
        places=tuple((c, places[c]) for c in cities),
        job_titles=_unique(fake.job, 600, _is_canonical_text),
        phones=build_phone_plan(loc.code, rng),
        spellings=loc.spellings,
        unknown_spellings=loc.unknown,
        email_domains=domains,
    )


@lru_cache(maxsize=4)
def build_pools(seed: int) -> Pools:
    """All pools for ``seed``; the same seed gives the same pools (cached per process)."""
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(seed)
    codes = sorted({fake.bothify("??-###").upper() for _ in range(60)})
    rng = random.Random(f"{seed}-products")
    products = tuple(sorted({f"{rng.choice(_PRODUCT_FAMILIES)} {code}" for code in codes}))
    return Pools(
        countries=tuple(_country_pool(loc, seed) for loc in _LOCALES),
        country_weights=tuple(loc.weight for loc in _LOCALES),
        products=products,
        subjects=_SUBJECTS,
        statuses=_STATUSES,
        priorities=_PRIORITIES,
    )
