"""The ``hard`` noise profile: duplicates that only their names, address, birth date and an id can link.

``crmflow demo-data --noise hard`` keeps the default profile's rates and adds, for each further record of a
person (a duplicate):

- most duplicates carry neither e-mail nor phone (:data:`HARD_NO_CONTACT`), so no deterministic rule can
  link them;
- one or two name variations (:func:`vary_name`): a typo in the first letter, a typo elsewhere, given and
  surname swapped, a missing given or surname, a nickname (:data:`NICKNAMES`), an initial;
- a birth date with transposed digits, swapped day and month, or one digit wrong (:func:`birth_typo`);
- sometimes another address (the person moved), only on duplicates that kept their e-mail and phone: with
  neither, nothing would be left to link them by.

Some new persons join a recent person's household (same surname and address, their own given name, birth
date, e-mail and phone): they are not duplicates, and a matcher that merges them is wrong.

Every person may have a national id (:func:`national_id`), written on some of their records and sometimes
with a typo (:func:`id_typo`); it is the ``National_ID`` column that only the hard profile's
``customers.csv`` has. Contacts get duplicates too, within their account and across accounts, and the
truth then gives every contact a cluster (its person). The rule of the moved address holds for them too: a
duplicate on its own account loses e-mail and phone at :data:`HARD_NO_CONTACT`, but one entered on *another*
(unrelated) account keeps at least one of the two (a person who changed job keeps a mobile or a personal
address), and a person who has neither is entered again only on its own account. A person's varied name on two
unrelated companies with nothing else in common is indistinguishable from two namesakes: no matcher could link
it without merging namesakes too.

The nickname table is a short list of common given-name short forms of the pools' languages, written from
general knowledge; nothing here is fitted to a public benchmark data set.
"""

from __future__ import annotations

import random
from datetime import date
from typing import Final, Literal

from crmflow.demo_data.layout import CUSTOMERS, SourceFile
from crmflow.demo_data.pools import name_case

NoiseProfile = Literal["default", "hard"]
NOISE_PROFILES: Final[tuple[NoiseProfile, ...]] = ("default", "hard")
#: ``customers.csv`` of the hard profile: the default columns and the national id.
HARD_CUSTOMERS: Final = SourceFile(
    CUSTOMERS.name, CUSTOMERS.table, CUSTOMERS.entity, (*CUSTOMERS.columns, "National_ID")
)

#: Share of duplicate records with neither e-mail nor phone.
HARD_NO_CONTACT: Final = 0.8
#: Share of duplicate records whose name varies (one variation, then a second one at HARD_SECOND_NAME).
HARD_NAME: Final = 0.85
HARD_SECOND_NAME: Final = 0.3
#: Share of duplicate records whose birth date has a typo.
HARD_BIRTH: Final = 0.2
#: Share of the duplicate records that kept e-mail and phone which are at another address (moved house).
HARD_MOVED: Final = 0.08
#: Share of persons with a national id; of their records, how many carry it; of those, how many with a typo.
ID_PERSONS: Final = 0.5
ID_ON_RECORD: Final = 0.7
ID_TYPO: Final = 0.1
#: Share of new persons who live with a recent person and share their surname (a household): not duplicates.
HOUSEHOLD: Final = 0.05
#: Share of contacts that are a further record of a recent contact person, and of those, how many are
#: entered on the same account (the others on another account, keeping their e-mail or phone or both: of those
#: on another account, :data:`HARD_NO_CONTACT` keep one channel only, the rest both).
CONTACT_DUPLICATE: Final = 0.12
CONTACT_SAME_ACCOUNT: Final = 0.5

NAME_VARIATIONS: Final = (
    "first_letter_first",
    "first_letter_last",
    "typo_first",
    "typo_last",
    "swap",
    "missing_first",
    "missing_last",
    "nickname",
    "initial",
)

#: Given name → common short forms (English, German, French, Dutch).
NICKNAMES: Final[dict[str, tuple[str, ...]]] = {
    "Alexander": ("Alex", "Sasha"), "Alexandra": ("Alex", "Sandra"), "Andrew": ("Andy", "Drew"),
    "Anthony": ("Tony",), "Benjamin": ("Ben",), "Catherine": ("Cathy", "Kate"), "Charles": ("Charlie", "Chuck"),
    "Christopher": ("Chris",), "Christine": ("Chris", "Tina"), "Daniel": ("Dan", "Danny"), "David": ("Dave",),
    "Deborah": ("Debbie", "Deb"), "Donald": ("Don",), "Edward": ("Ed", "Ted"), "Elizabeth": ("Liz", "Beth"),
    "Jacob": ("Jake",), "James": ("Jim", "Jimmy"), "Jennifer": ("Jen", "Jenny"), "Jessica": ("Jess",),
    "John": ("Jack", "Johnny"), "Jonathan": ("Jon",), "Joseph": ("Joe",), "Joshua": ("Josh",),
    "Katherine": ("Kate", "Kathy"), "Kenneth": ("Ken",), "Margaret": ("Maggie", "Peggy"), "Matthew": ("Matt",),
    "Michael": ("Mike",), "Nicholas": ("Nick",), "Patricia": ("Pat", "Patty"), "Patrick": ("Pat",),
    "Rebecca": ("Becky",), "Richard": ("Rick", "Dick"), "Robert": ("Bob", "Rob"), "Samuel": ("Sam",),
    "Stephen": ("Steve",), "Steven": ("Steve",), "Susan": ("Sue",), "Thomas": ("Tom",), "Timothy": ("Tim",),
    "Victoria": ("Vicky",), "William": ("Will", "Bill"), "Zachary": ("Zach",),
    "Friedrich": ("Fritz",), "Johannes": ("Hans",), "Joachim": ("Achim",), "Wolfgang": ("Wolf",),
    "Franziska": ("Franzi",), "Elisabeth": ("Lisa", "Elli"), "Bernhard": ("Bernd",), "Gertrud": ("Trude",),
    "Heinrich": ("Heinz",), "Katharina": ("Kathi", "Katja"), "Susanne": ("Susi",),
    "Guillaume": ("Guy",), "Dominique": ("Dom",), "Frédéric": ("Fred",), "Nicolas": ("Nico",),
    "Jacqueline": ("Jacky",), "Isabelle": ("Isa",),
    "Cornelis": ("Kees",), "Johanna": ("Anneke",), "Hendrik": ("Henk",), "Willem": ("Wim",), "Jacobus": ("Koos",),
}  # fmt: skip

_LOWER: Final = "abcdefghijklmnopqrstuvwxyz"
# Letters a first letter is often mistaken for (sound or keyboard), else any letter.
_FIRST_LETTER: Final[dict[str, str]] = {
    "C": "KS", "K": "CG", "S": "CZ", "Z": "S", "P": "BO", "B": "PV", "V": "FW", "F": "VP", "W": "VQ",
    "G": "JK", "J": "GY", "I": "YE", "Y": "IJ", "E": "AI", "A": "EO", "O": "AU", "U": "OI", "M": "NL",
    "N": "MH", "D": "TS", "T": "DR", "R": "TE", "L": "KM", "H": "NJ",
}  # fmt: skip
_BIRTH_FIRST: Final = date(1940, 1, 1).toordinal()
_BIRTH_LAST: Final = date(2005, 12, 31).toordinal()


def nickname(first: str, rng: random.Random) -> str | None:
    """A short form of ``first`` from :data:`NICKNAMES`, or None when the table has none."""
    forms = NICKNAMES.get(first)
    return forms[int(rng.random() * len(forms))] if forms else None


def first_letter_typo(name: str, rng: random.Random) -> str:
    """``name`` with its first letter replaced (``Catherine`` → ``Katherine``); still a canonical name."""
    head = name[:1]
    if not ("A" <= head <= "Z") or len(name) < 2:
        return name
    choices = _FIRST_LETTER.get(head) or _LOWER.upper().replace(head, "")
    out = choices[int(rng.random() * len(choices))] + name[1:]
    return out if name_case(out) == out else name


def inner_typo(name: str, rng: random.Random) -> str:
    """A one-character typo after the first letter (substitution, transposition or deletion)."""
    spots = [i for i in range(1, len(name)) if name[i] in _LOWER]
    if not spots:
        return name
    i = spots[int(rng.random() * len(spots))]
    kind = rng.random()
    if kind < 0.4 and i + 1 < len(name) and name[i + 1] in _LOWER and name[i] != name[i + 1]:
        out = name[:i] + name[i + 1] + name[i] + name[i + 2 :]
    elif kind < 0.7 and len(name) > 3:
        out = name[:i] + name[i + 1 :]
    else:
        out = name[:i] + rng.choice(_LOWER.replace(name[i], "")) + name[i + 1 :]
    return out if name_case(out) == out else name


def vary_name(first: str, last: str, rng: random.Random) -> tuple[str | None, str | None, list[str]]:
    """One or two variations of a person's name (None: that part missing) and their names.

    Never both parts missing: a record without any name is the ``required`` reject, not a duplicate.
    """
    kinds: list[str] = []
    f: str | None = first
    l_: str | None = last
    rounds = 2 if rng.random() < HARD_SECOND_NAME else 1
    for _ in range(rounds):
        kind = NAME_VARIATIONS[int(rng.random() * len(NAME_VARIATIONS))]
        if kind == "nickname" and f is not None and (short := nickname(f, rng)) is not None:
            f = short
        elif kind == "first_letter_first" and f is not None:
            f = first_letter_typo(f, rng)
        elif kind == "first_letter_last" and l_ is not None:
            l_ = first_letter_typo(l_, rng)
        elif kind == "typo_first" and f is not None:
            f = inner_typo(f, rng)
        elif kind == "typo_last" and l_ is not None:
            l_ = inner_typo(l_, rng)
        elif kind == "swap" and f is not None and l_ is not None:
            f, l_ = l_, f
        elif kind == "missing_first" and l_ is not None and f is not None:
            f = None
        elif kind == "missing_last" and f is not None and l_ is not None:
            l_ = None
        elif kind == "initial" and f is not None and len(f) > 1:
            f = f[0] + "."
        else:
            continue
        kinds.append(kind)
    return f, l_, kinds


def birth_typo(day: int, rng: random.Random) -> int:
    """A birth date (ordinal) written wrongly but validly: swapped day/month or two adjacent digits
    transposed (the common slips), else one digit wrong; ``day`` itself when no such date is in range."""
    d = date.fromordinal(day)
    iso = d.isoformat()
    digits = [i for i, c in enumerate(iso) if c.isdigit()]
    swaps = [f"{d.year:04d}-{d.day:02d}-{d.month:02d}"] if d.day <= 12 and d.day != d.month else []
    swaps += [iso[:a] + iso[a + 1] + iso[a] + iso[a + 2 :] for a in digits if a + 1 in digits and iso[a] != iso[a + 1]]
    typos = [iso[:i] + c + iso[i + 1 :] for i in digits[2:] for c in "0123456789" if c != iso[i]]
    valid_swaps, valid_typos = _in_range(swaps), _in_range(typos)
    pool = valid_swaps if valid_swaps and (rng.random() < 0.6 or not valid_typos) else valid_typos
    return pool[int(rng.random() * len(pool))] if pool else day


def _in_range(texts: list[str]) -> list[int]:
    out = []
    for text in texts:
        try:
            ordinal = date.fromisoformat(text).toordinal()
        except ValueError:
            continue
        if _BIRTH_FIRST <= ordinal <= _BIRTH_LAST:
            out.append(ordinal)
    return out


def national_id(rng: random.Random) -> str:
    """A nine-digit national id (no real scheme: the first digit is never 0)."""
    return f"{1 + int(rng.random() * 9)}{int(rng.random() * 10**8):08d}"


def id_typo(value: str, rng: random.Random) -> str:
    """One digit of ``value`` wrong, or two adjacent digits transposed."""
    i = int(rng.random() * (len(value) - 1))
    if rng.random() < 0.5 and value[i] != value[i + 1]:
        return value[:i] + value[i + 1] + value[i] + value[i + 2 :]
    j = 1 + int(rng.random() * (len(value) - 1))
    other = "0123456789".replace(value[j], "")
    return value[:j] + other[int(rng.random() * len(other))] + value[j + 1 :]
