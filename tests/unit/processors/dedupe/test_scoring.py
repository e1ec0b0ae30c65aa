"""Pairwise matching: name variations, typos, abbreviations, deterministic rules and their vetoes."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from pydantic import ValidationError

from processors.dedupe import DedupeConfig, Scorer
from processors.dedupe.features import extract, first_name_form, fold, soundex
from processors.dedupe.scoring import Comparison, name_similarity, street_similarity

pytestmark = pytest.mark.unit

#: These cases pin the points scorer's rules (its birth-date veto, its name floors); the Fellegi-Sunter
#: default is tested in test_matcher_config.
POINTS = DedupeConfig(scoring="points")

NO_LINKS = {"email": None, "phone": None}  # force the fuzzy path: nothing deterministic to share


def compare(a: dict[str, Any], b: dict[str, Any], config: DedupeConfig | None = None) -> Comparison:
    return Scorer(config or POINTS).compare(extract(a, "account"), extract(b, "account"))


@pytest.mark.parametrize("first", ["J.", "John D.", "Jonh", "john"])
def test_john_doe_variations_match_on_name_birth_date_and_address(account: Any, first: str) -> None:
    c = compare(account(), account(customer_id="C2", first_name=first, **NO_LINKS))
    assert c.matched and c.rule == "fuzzy" and c.veto is None
    assert c.score >= DedupeConfig().match_threshold


def test_initial_and_middle_initial_forms() -> None:
    assert first_name_form("John D.") == "john"
    assert first_name_form("J.") == "j"
    assert first_name_form("Anne-Marie") == "anne marie"
    sim = name_similarity({"fn": "J.", "ln": "Doe"}, {"fn": "John", "ln": "Doe"}, DedupeConfig())
    assert sim.first == DedupeConfig().initial_similarity and sim.last == 1.0
    other = name_similarity({"fn": "M.", "ln": "Doe"}, {"fn": "John", "ln": "Doe"}, DedupeConfig())
    assert other.first == 0.0  # an initial of another letter is no evidence


def test_swapped_first_and_last_name_match_at_a_small_penalty(account: Any) -> None:
    c = compare(account(), account(customer_id="C2", first_name="Doe", last_name="John", **NO_LINKS))
    assert c.matched and c.name.swapped
    assert c.name.combined == pytest.approx(1.0 - DedupeConfig().swap_penalty)


def test_a_swapped_name_with_a_part_missing_is_still_the_same_name() -> None:
    """"Adam" entered as the given name of "Jérôme Adam" (swapped, surname missing): the surname against the given
    name, not a given name that disagrees, so the first-name veto does not stop the shared e-mail."""
    config = DedupeConfig()
    full, alone = {"fn": "Jérôme", "ln": "Adam"}, {"fn": "Adam"}
    for a, b in ((full, alone), (alone, full), ({"ln": "Jérôme"}, full)):
        sim = name_similarity(a, b, config)
        assert sim.swapped and sim.combined == pytest.approx(1.0 - config.swap_penalty)
        assert (sim.first, sim.last).count(None) == 1
    assert name_similarity({"fn": "Adam"}, {"fn": "Adam", "ln": "Berger"}, config).swapped is False
    assert name_similarity({"fn": "Paul"}, {"fn": "Jérôme", "ln": "Adam"}, config).first is not None
    contacts = Scorer(config.for_contacts())
    mail = "jerome.adam@example.net"
    c = contacts.compare({**full, "em": mail, "pa": "C1"}, {**alone, "em": mail, "pa": "C2"})
    assert c.matched and c.rule == "email" and c.veto is None


def test_a_transposition_in_a_short_name_counts_as_one_typo(account: Any) -> None:
    # Jaro-Winkler alone gives kim/kmi 0.56, which would veto the shared e-mail as "another person".
    a = account(first_name="Kim", last_name="Sherman")
    c = compare(a, account(customer_id="C2", first_name="Kmi", last_name="Sherman"))
    assert c.matched and c.rule == "email"
    assert c.name.first == DedupeConfig().one_edit_similarity


def test_street_abbreviations_and_house_numbers() -> None:
    assert street_similarity("12 Main St.", "12 Main Street") == 1.0
    assert street_similarity("Berliner Str. 5", "Berliner Straße 5") == 1.0
    assert street_similarity("12 Main Street", "14 Main Street") == 0.0


def test_abbreviated_street_keeps_its_points(account: Any) -> None:
    full = compare(account(), account(customer_id="C2", **NO_LINKS))
    short = compare(account(), account(customer_id="C2", street="4395 Cameron Ave.", **NO_LINKS))
    assert short.score == pytest.approx(full.score)


def test_same_name_and_address_with_another_birth_date_is_vetoed(account: Any) -> None:
    c = compare(account(), account(customer_id="C2", birth_date=date(1999, 1, 1), **NO_LINKS))
    assert not c.matched and c.veto == "birth_date"


def test_same_name_without_birth_date_other_email_and_phone_is_no_match(account: Any) -> None:
    other = account(customer_id="C2", birth_date=None, email="jd@example.org", phone="+14146519999",
                    street="1 Elm Road", postal_code="90210", city="Springfield")  # fmt: skip
    c = compare(account(), other)
    assert not c.matched and c.veto is None and c.rule == "fuzzy"


def test_name_and_city_alone_are_not_enough(account: Any) -> None:
    other = account(customer_id="C2", birth_date=None, street=None, postal_code=None, **NO_LINKS)
    c = compare(account(), other)
    assert not c.matched and c.score < DedupeConfig().match_threshold


def test_shared_email_of_two_family_members_is_vetoed_by_the_name(account: Any) -> None:
    c = compare(account(), account(customer_id="C2", first_name="Mary", birth_date=None))
    assert not c.matched and c.rule == "email" and c.veto == "name"


def test_shared_phone_with_another_birth_date_is_vetoed(account: Any) -> None:
    c = compare(account(), account(customer_id="C2", email=None, birth_date=date(1950, 1, 2)))
    assert not c.matched and c.rule == "phone" and c.veto == "birth_date"


def test_shared_phone_matches_despite_a_new_address(account: Any) -> None:
    c = compare(account(), account(customer_id="C2", email=None, street="1 Elm Road", city="Springfield"))
    assert c.matched and c.rule == "phone"


def test_email_as_evidence_only_when_not_deterministic(account: Any) -> None:
    config = DedupeConfig(scoring="points", deterministic_rules=())
    other = account(customer_id="C2", birth_date=None, street=None, postal_code=None, city=None, phone=None)
    c = compare(account(), other, config)
    assert c.rule == "fuzzy" and c.matched  # name 4 + e-mail 6


def test_evidence_is_plain_and_free_of_personal_data(account: Any) -> None:
    c = compare(account(), account(customer_id="C2", first_name="J.", **NO_LINKS))
    evidence = c.evidence("C2", "C2")
    assert evidence["rule"] == "fuzzy" and evidence["matched_id"] == "C2" and evidence["veto"] is None
    assert all(isinstance(v, str | float | int | bool | type(None)) for v in evidence.values())
    assert "John" not in str(evidence) and "Doe" not in str(evidence)


def test_fold_and_soundex() -> None:
    assert fold("  Jürgen  O'Brien-Müller ") == "jurgen o brien muller"
    assert fold("Straße") == "strasse"
    assert soundex("Robert") == soundex("Rupert") == "R163"
    assert soundex("Ashcraft") == "A261"
    assert soundex("Tymczak") == "T522"
    assert soundex("") == ""


def test_config_is_frozen_and_rejects_unknown_keys() -> None:
    config = DedupeConfig()
    with pytest.raises(ValidationError):
        config.match_threshold = 1.0
    with pytest.raises(ValidationError):
        DedupeConfig.model_validate({"match_treshold": 5.0})
    with pytest.raises(ValidationError):
        DedupeConfig(deterministic_rules=("fax",))  # type: ignore[arg-type]


def test_names_without_letters_never_match_by_name(account: Any) -> None:
    c = compare(account(first_name="."), account(customer_id="C2", first_name="-", **NO_LINKS))
    assert c.name.first == 0.0 and not c.matched


@pytest.mark.parametrize(("a", "b"), [("Karl", "Garl"), ("Catherine", "Katherine"), ("Frazier", "Vrazier")])
def test_a_typo_in_the_first_letter_alone_scores_the_first_letter_similarity(a: str, b: str) -> None:
    config = DedupeConfig()
    sim = name_similarity({"fn": a, "ln": "Malone"}, {"fn": b, "ln": "Malone"}, config)
    assert sim.first is not None and sim.first >= config.first_letter_similarity


def test_the_first_letter_rule_needs_the_rest_equal_and_three_letters_and_can_be_switched_off() -> None:
    config = DedupeConfig()
    kyle, cyle = {"fn": "Kyle", "ln": "Nelson"}, {"fn": "Cyle", "ln": "Nelson"}
    assert name_similarity(kyle, cyle, config).first == config.first_letter_similarity  # Jaro-Winkler: 0.83
    assert name_similarity(kyle, cyle, DedupeConfig(first_letter_similarity=0.0)).first == pytest.approx(0.8333, 1e-3)
    other = name_similarity({"fn": "Mary", "ln": "Doe"}, {"fn": "Gory", "ln": "Doe"}, config)
    assert other.first is not None and other.first < config.first_letter_similarity, "two letters differ"
    short = name_similarity({"fn": "Al", "ln": "Doe"}, {"fn": "Ed", "ln": "Doe"}, config)
    assert short.first == 0.0, "a two-letter name has no rest to compare"
