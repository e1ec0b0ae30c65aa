"""Issue 13's matcher: config-declared comparisons and passes, vetoes that switch off, missing names,
identifiers, Fellegi-Sunter scoring with EM-estimated weights, and the FEBRL mapping."""

from __future__ import annotations

import json
import random
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from processors.dedupe import DedupeConfig, Deduper
from processors.dedupe.benchmark import febrl_account
from processors.dedupe.blocking import BlockKeyer, pass_key
from processors.dedupe.comparators import build, date_level, level_count
from processors.dedupe.config import BlockingPass, BlockPart, ComparisonSpec
from processors.dedupe.features import extract
from processors.dedupe.model import ModelFileError, load_model
from processors.dedupe.train import train

pytestmark = pytest.mark.unit

NO_CONTACT = {"email": None, "phone": None}
FS = DedupeConfig(scoring="fellegi_sunter", identifier_fields=("national_id",))


def clusters(config: DedupeConfig, records: list[dict[str, Any]]) -> dict[str, str]:
    deduper = Deduper(config)
    for record in records:
        deduper.process(record)
    return dict(deduper.state.clusters)


# ------------------------------------------------------------------------------------------ comparators


def level(comparator: str, a: Any, b: Any, levels: tuple[float, ...] = (), field: str = "x") -> int:
    spec = ComparisonSpec(field=field, comparator=comparator, levels=levels)  # type: ignore[arg-type]
    return build(spec, lambda x, y: 1.0 if x == y else 0.0)(a, b)


def test_date_levels_tolerate_a_transposed_day_and_month_or_one_digit() -> None:
    assert date_level("1971-04-28", "1971-04-28") == 0
    assert date_level("1971-04-05", "1971-05-04") == 1  # day and month swapped
    assert date_level("1971-04-28", "1971-04-23") == 1  # one digit
    assert date_level("1971-04-28", "1917-04-28") == 2  # two digits
    assert date_level("1971-04-28", "1985-11-02") == 2


@pytest.mark.parametrize(
    ("comparator", "levels", "a", "b", "expected"),
    [
        ("exact", (), "ABC-1", "abc 1", 0),
        ("exact", (), "abc", "abd", 1),
        ("levenshtein", (1, 2), "1804974", "1804947", 2),  # a transposition is two edits
        ("levenshtein", (1, 2), "1804974", "1804975", 1),
        ("levenshtein", (1, 2), "1804974", "9999999", 3),
        ("numeric", (1, 10), "100", "100.5", 1),
        ("numeric", (1, 10), "100", "105", 2),
        ("numeric", (1, 10), "100", "x", 3),
        ("jaro_winkler", (0.9,), "springvale", "springvael", 1),
        ("jaro_winkler", (0.9,), "springvale", "toowoomba", 2),
        ("postcode", (3,), "2119", "2119", 0),
        ("postcode", (3,), "2119", "2191", 1),  # one typo (a transposition)
        ("postcode", (3,), "2119", "2115", 1),
        ("postcode", (3,), "2119", "2145", 2),  # same first three? no: shared prefix "21" < 3
        ("postcode", (2,), "2119", "2145", 2),
        ("postcode", (3,), "2119", "4000", 3),
        ("token_set", (0.9,), "wallaby place delmar", "delmar wallaby place", 0),
    ],
)
def test_comparator_levels(comparator: str, levels: tuple[float, ...], a: str, b: str, expected: int) -> None:
    if (comparator, levels, a, b) == ("postcode", (3,), "2119", "2145"):
        expected = 3  # shares only "21": below the one prefix level
    assert level(comparator, a, b, levels) == expected
    assert level(comparator, b, a, levels) == expected, "symmetric"


def test_streets_with_different_house_numbers_disagree() -> None:
    assert level("token_set", "12 Main Street", "14 Main Street", (0.9,), field="street") == 2
    assert level("token_set", "12 Main St.", "12 Main Street", (0.9,), field="street") == 0


def test_level_counts() -> None:
    assert level_count(ComparisonSpec(field="d", comparator="date")) == 3
    assert level_count(ComparisonSpec(field="p", comparator="postcode", levels=(3, 2))) == 5
    assert level_count(ComparisonSpec(field="n", comparator="jaro_winkler", levels=(0.9,))) == 3


# ------------------------------------------------------------------------------------------ vetoes


def test_switching_the_birth_date_veto_off_switches_off_the_cluster_refusal_too(account: Any) -> None:
    records = [
        account(customer_id="C1", phone=None),  # born 1971-04-28
        account(customer_id="C2", birth_date=None),  # same e-mail as C1, same phone as C3
        account(customer_id="C3", email=None, birth_date=date(1980, 1, 1)),
    ]
    # Unset, the birth-date veto is on with points scoring (the Fellegi-Sunter default weighs the date instead).
    on = clusters(DedupeConfig(scoring="points"), records)
    assert on["C1"] == on["C2"] == "C1" and on["C3"] == "C3", "a cluster never holds two birth dates"
    off = clusters(DedupeConfig(scoring="points", veto_birth_date_conflict=False), records)
    assert off["C1"] == off["C2"] == off["C3"] == "C1"


def test_the_pair_veto_follows_the_setting(account: Any) -> None:
    twins = [account(customer_id="C1"), account(customer_id="C2", birth_date=date(1980, 1, 1))]  # same e-mail
    assert len(set(clusters(DedupeConfig(scoring="points"), twins).values())) == 2
    assert len(set(clusters(DedupeConfig(scoring="points", veto_birth_date_conflict=False), twins).values())) == 1


def test_a_configured_veto_field_stops_a_match(account: Any) -> None:
    pair = [account(customer_id="C1", national_id="111"), account(customer_id="C2", national_id="222")]
    assert len(set(clusters(DedupeConfig(), pair).values())) == 1
    assert len(set(clusters(DedupeConfig(vetoes=("national_id",)), pair).values())) == 2


def test_fellegi_sunter_tolerates_a_birth_date_typo_even_with_the_veto_on(account: Any) -> None:
    base = {**NO_CONTACT, "first_name": "Jon"}
    pair = [account(customer_id="C1", **base), account(customer_id="C2", **base, birth_date=date(1971, 4, 23))]
    assert len(set(clusters(FS.model_copy(update={"veto_birth_date_conflict": True}), pair).values())) == 1


# ------------------------------------------------------------------------------------------ names, identifiers


@pytest.mark.parametrize("config", [DedupeConfig(), FS], ids=["points", "fellegi_sunter"])
def test_a_missing_first_name_still_allows_a_fuzzy_match(account: Any, config: DedupeConfig) -> None:
    pair = [account(customer_id="C1", **NO_CONTACT), account(customer_id="C2", first_name=None, **NO_CONTACT)]
    assert len(set(clusters(config, pair).values())) == 1


def test_a_missing_name_part_alone_is_not_enough(account: Any) -> None:
    other = {"street": "1 Other Road", "postal_code": "99999", "city": "Elsewhere", "birth_date": None}
    pair = [account(customer_id="C1", **NO_CONTACT), account(customer_id="C2", first_name=None, **NO_CONTACT, **other)]
    assert len(set(clusters(DedupeConfig(), pair).values())) == 2
    assert len(set(clusters(FS, pair).values())) == 2


def test_an_identifier_is_strong_when_equal_and_weak_when_different(account: Any) -> None:
    moved = {**NO_CONTACT, "street": "7 Wallaby Place", "postal_code": "2119", "city": "Cleveland"}
    same_id = [account(customer_id="C1", national_id="1804974", **NO_CONTACT),
               account(customer_id="C2", national_id="1804974", first_name="Jhon", **moved)]  # fmt: skip
    assert len(set(clusters(FS, same_id).values())) == 1, "the id outweighs a new address"
    assert len(set(clusters(FS.model_copy(update={"identifier_fields": ()}), same_id).values())) == 2
    typo_id = [account(customer_id="C1", national_id="1804974", **NO_CONTACT),
               account(customer_id="C2", national_id="9904971", **NO_CONTACT)]  # fmt: skip
    assert len(set(clusters(FS, typo_id).values())) == 1, "a differing id costs at most identifier_disagreement_bits"


# ------------------------------------------------------------------------------------------ blocking


def raw(record: dict[str, Any], config: DedupeConfig) -> set[str]:
    deduper = Deduper(config)
    return set(BlockKeyer(config.model_copy(update={"hash_block_keys": False})).raw_keys(deduper.features_of(record)))


def test_default_passes_lean_on_neither_email_nor_phone(account: Any) -> None:
    keys = raw(account(), DedupeConfig(builtin_blocking=False))
    assert keys and not any("example" in k or "+1414" in k for k in keys)
    assert {k.partition("|")[0] for k in keys} == {"ph_names", "ph_last_year", "ph_first_year", "pc_year", "birth",
                                                   "street_pc", "sn_names"}  # fmt: skip


def test_phonetic_keys_survive_spelling_variants(account: Any) -> None:
    config = DedupeConfig(builtin_blocking=False)
    a = raw(account(first_name="John", last_name="Meyer"), config)
    b = raw(account(first_name="Jon", last_name="Mayer", birth_date=None, postal_code=None), config)
    assert any(k.startswith("ph_names|") for k in a & b)


def test_a_record_without_names_still_gets_keys(account: Any) -> None:
    keys = raw(account(first_name=None, last_name=None, full_name="x", national_id="123"), FS)
    assert {"pc_year|01236|1971", "birth|1971-04-28|01236", "id_national_id|123"} <= keys


def test_sorted_neighbourhood_is_a_range_of_the_sorted_name_key(account: Any) -> None:
    spec = BlockingPass(name="sn", kind="sorted_neighbourhood", prefix=9,
                        parts=(BlockPart(field="last_name"), BlockPart(field="first_name")))  # fmt: skip

    def key(first: str, last: str) -> str | None:
        return pass_key(extract(account(first_name=first, last_name=last), "account"), spec, "account")

    assert key("Jonathan", "Smith") == key("Jonahtan", "Smith") == "sn|smithjona"  # typo past the prefix
    assert key("Jonathan", "Smith") != key("Jane", "Smith")
    assert key("Al", "Li") == "sn|lial|=", "a key shorter than the prefix is kept whole"


def test_a_pass_over_any_mapped_field(account: Any) -> None:
    crn = BlockPart(field="company_registration_number", transform="digits")
    config = DedupeConfig(builtin_blocking=False, blocking=(BlockingPass(name="crn", parts=(crn,)),))
    assert raw(account(company_registration_number="HRB-12345"), config) == {"crn|12345"}


def test_config_rejects_duplicate_passes_and_half_hand_weights() -> None:
    dup = BlockingPass(name="a", parts=(BlockPart(field="city"),))
    with pytest.raises(ValueError, match="unique"):
        DedupeConfig(blocking=(dup, dup))
    with pytest.raises(ValueError, match="both m and u"):
        DedupeConfig(comparisons=(ComparisonSpec(field="city", m=(0.9, 0.1)),))


# ------------------------------------------------------------------------------------------ weights


def synthetic_people(n: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """n people, a third with a duplicate carrying one typo; no e-mail, no phone."""
    rng = random.Random(seed)
    firsts = ["anna", "ben", "carla", "dieter", "emma", "farid", "greta", "hugo", "ines", "jonas", "karin", "lena"]
    lasts = ["meyer", "schmidt", "novak", "rossi", "garcia", "kowalski", "dubois", "jansen", "berg", "lindqvist"]
    records, truth = [], {}
    for i in range(n):
        person = {
            "customer_id": f"P{i:05d}a", "full_name": "x", "first_name": rng.choice(firsts),
            "last_name": rng.choice(lasts) + rng.choice(["", "er", "ova", "i"]),
            "birth_date": date(1940 + rng.randrange(60), 1 + rng.randrange(12), 1 + rng.randrange(28)),
            "postal_code": f"{rng.randrange(1000, 9999)}", "city": rng.choice(["graz", "linz", "wels", "steyr"]),
            "street": f"{rng.randrange(1, 200)} {rng.choice(['haupt', 'bahnhof', 'kirch'])} street",
        }  # fmt: skip
        records.append(person)
        truth[person["customer_id"]] = str(i)
        if i % 3 == 0:
            dup = {**person, "customer_id": f"P{i:05d}b"}
            name = dup["last_name"]
            dup["last_name"] = name[:2] + name[3] + name[2] + name[4:]  # a transposition
            if i % 2:
                dup["street"] = None
            records.append(dup)
            truth[dup["customer_id"]] = str(i)
    return records, truth


def test_em_estimates_the_weights_and_the_prior_without_labels(tmp_path: Path) -> None:
    records, truth = synthetic_people(600, seed=3)
    config = DedupeConfig(scoring="fellegi_sunter", builtin_blocking=False)
    model = train(records, config, random_pairs=5000)
    weights = {c.spec.field: c.weights for c in model.comparisons}
    for field in ("first_name", "birth_date", "postal_code"):
        assert weights[field][0] > 3 > 0 > weights[field][-1], field
    assert 0 < model.prior < 0.5
    path = tmp_path / "model.json"
    path.write_text(model.to_json("account"), encoding="utf-8")
    trained = config.model_copy(update={"model_file": path})
    assert load_model(trained).comparisons[0].m == pytest.approx(model.comparisons[0].m, abs=1e-5)
    found = clusters(trained, records)
    predicted = {(a, b) for a in found for b in found if a < b and found[a] == found[b]}
    true = {(a, b) for a in truth for b in truth if a < b and truth[a] == truth[b]}
    assert len(predicted & true) >= 0.95 * len(true) and len(predicted - true) <= 0.01 * len(true) + 1


def test_model_files_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"format": "something else"}), encoding="utf-8")
    with pytest.raises(ModelFileError, match="not a crmflow-dedupe-model"):
        load_model(FS.model_copy(update={"model_file": path}))
    with pytest.raises(ModelFileError, match="cannot read"):
        load_model(FS.model_copy(update={"model_file": tmp_path / "missing.json"}))


def test_hand_weights_are_used_when_given(account: Any) -> None:
    spec = ComparisonSpec(field="city", comparator="exact", m=(0.5, 0.5), u=(0.5, 0.5))
    model = load_model(DedupeConfig(scoring="fellegi_sunter", comparisons=(spec,)))
    assert model.comparisons[0].weights == (0.0, 0.0)


# ------------------------------------------------------------------------------------------ FEBRL mapping


def test_febrl_rows_become_clean_accounts() -> None:
    row = {"given_name": "mitchell", "surname": float("nan"), "street_number": "7", "address_1": "wallaby place",
           "suburb": "cleveland", "postcode": "2119", "state": "sa", "date_of_birth": "19560431",
           "soc_sec_id": "1804974"}  # fmt: skip
    account = febrl_account("rec-1-dup-0", row)
    assert account["first_name"] == "mitchell" and account["last_name"] is None
    assert account["street"] == "7 wallaby place" and account["national_id"] == "1804974"
    assert account["birth_date"] is None, "an impossible date is dropped, as the mapper's parse_date does"
    assert febrl_account("r", {**row, "date_of_birth": "19560409"})["birth_date"] == date(1956, 4, 9)


def test_the_default_is_fellegi_sunter_with_a_first_name_veto_and_an_empty_list_switches_it_off(account: Any) -> None:
    default = DedupeConfig()
    assert default.scoring == "fellegi_sunter" and default.veto_fields() == {"first_name"}
    assert DedupeConfig(scoring="points").veto_fields() == {"birth_date"}
    # A household: same surname, address and birth year, another given name.
    pair = [account(customer_id="C1", **NO_CONTACT), account(customer_id="C2", **NO_CONTACT, first_name="Maria")]
    assert len(set(clusters(default, pair).values())) == 2
    assert len(set(clusters(DedupeConfig(vetoes=()), pair).values())) == 1


def test_contacts_get_their_own_passes_and_comparisons(account: Any) -> None:
    contacts = DedupeConfig().for_contacts()
    assert contacts.entity == "contact" and contacts.scoring == "fellegi_sunter" and contacts.model_file is None
    assert {c.field for c in contacts.comparisons} >= {"first_name", "last_name", "customer_id", "job_title"}
    assert all(p.field not in {"birth_date", "postal_code"} for b in contacts.blocking for p in b.parts)
    own = DedupeConfig(blocking=(BlockingPass(name="x", parts=(BlockPart(field="last_name"),)),))
    assert own.for_contacts().blocking == own.blocking, "passes a config declares are kept"


def test_contacts_on_two_accounts_meet_without_e_mail_or_phone() -> None:
    deduper = Deduper(DedupeConfig().for_contacts())
    first = {"contact_id": "K1", "customer_id": "C1", "first_name": "Terry", "last_name": "Brooks",
             "job_title": "Surveyor"}  # fmt: skip
    # Another account, a typo in the first letter, swapped parts: no shared initials, parent, e-mail or phone.
    typo = {**first, "contact_id": "K2", "customer_id": "C9", "first_name": "Derry"}
    swapped = {**first, "contact_id": "K3", "customer_id": "C9", "first_name": "Brooks", "last_name": "Terry"}
    namesake = {**first, "contact_id": "K4", "customer_id": "C7", "job_title": None}
    out = [deduper.process(r).golden_id for r in (first, typo, swapped, namesake)]
    assert out == ["K1", "K1", "K1", "K4"], "the job title links another account; a bare namesake does not"


def test_the_dedupe_topic_partitions_are_a_setting_of_the_stage_not_of_the_matcher() -> None:
    from processors.config import DedupeSettings

    settings = DedupeSettings(partitions=1)
    assert settings.partitions == 1 and settings.matcher().scoring == "fellegi_sunter"
    assert "partitions" not in settings.matcher().model_dump()
    with pytest.raises(ValueError, match="partitions"):
        DedupeSettings(partitions=0)


def test_an_unordered_pass_survives_swapped_names_and_tail_a_first_letter_typo() -> None:
    last, first = BlockPart(field="last_name", transform="nysiis"), BlockPart(field="first_name", transform="nysiis")
    names = BlockingPass(name="ph", parts=(last, first), unordered=True)
    tail = BlockingPass(name="lt", parts=(BlockPart(field="last_name"), first.model_copy(update={"transform": "tail"})))
    john, swapped, typo = {"fn": "John", "ln": "Smith"}, {"fn": "Smith", "ln": "John"}, {"fn": "Dohn", "ln": "Smith"}
    assert pass_key(john, names, "account") == pass_key(swapped, names, "account") is not None
    assert pass_key(john, tail, "account") == pass_key(typo, tail, "account") == "lt|smith|ohn"
    assert pass_key({"fn": "J", "ln": "Smith"}, tail, "account") is None, "an initial has no tail"


def test_two_contacts_with_different_e_mail_addresses_are_not_merged_by_the_rest() -> None:
    """Namesakes on two accounts with the same job title add up to a match in bits; their two mailboxes veto it.
    A missing address vetoes nothing, and a config's own ``vetoes`` replace the default."""
    steve = {"contact_id": "K1", "customer_id": "C1", "first_name": "Steve", "last_name": "Ladeck",
             "email": "steve.ladeck@one.example", "job_title": "Buyer, retail"}  # fmt: skip
    namesake = {**steve, "contact_id": "K2", "customer_id": "C2", "email": "s.ladeck@two.example"}
    no_mail = {**steve, "contact_id": "K3", "customer_id": "C3", "email": None}
    assert DedupeConfig().for_contacts().veto_fields() == {"first_name", "last_name", "email"}

    def goldens(config: DedupeConfig, *records: dict[str, Any]) -> list[str]:
        deduper = Deduper(config)
        return [deduper.process(r).golden_id for r in records]

    assert goldens(DedupeConfig().for_contacts(), steve, namesake) == ["K1", "K2"]
    assert goldens(DedupeConfig().for_contacts(), steve, no_mail) == ["K1", "K1"]
    own = DedupeConfig(vetoes=("first_name",)).for_contacts()
    assert goldens(own, steve, namesake) == ["K1", "K1"], "the score alone merges"


def test_every_contact_of_an_account_meets_every_other_whatever_their_names() -> None:
    """Two variations at once (a first-letter typo in each part) leave no name key in common; the account pass
    still compares them, and the same account with both parts near adds up to a match."""
    config = DedupeConfig().for_contacts()
    kristen = {"contact_id": "K1", "customer_id": "C1", "first_name": "Kristen", "last_name": "Frazier"}
    typos = {**kristen, "contact_id": "K2", "first_name": "Gristen", "last_name": "Vrazier"}
    keyer = BlockKeyer(config.model_copy(update={"hash_block_keys": False}))
    shared = set(keyer.raw_keys(extract(kristen, "contact"))) & set(keyer.raw_keys(extract(typos, "contact")))
    assert {k.partition("|")[0] for k in shared} == {"pa"}
    deduper = Deduper(config)
    assert [deduper.process(r).golden_id for r in (kristen, typos)] == ["K1", "K1"]


def test_a_contact_on_another_account_with_a_name_part_missing_meets_on_its_job_title() -> None:
    config = DedupeConfig().for_contacts()
    rita = {"contact_id": "K1", "customer_id": "C1", "first_name": "Rita", "last_name": "Cunningham",
            "job_title": "Engineer, aeronautical"}  # fmt: skip
    no_surname = {**rita, "contact_id": "K2", "customer_id": "C9", "last_name": None}
    keyer = BlockKeyer(config.model_copy(update={"hash_block_keys": False}))
    shared = set(keyer.raw_keys(extract(rita, "contact"))) & set(keyer.raw_keys(extract(no_surname, "contact")))
    assert {k.partition("|")[0] for k in shared} == {"job_first"}


def test_two_contacts_of_one_account_with_one_name_part_in_common_are_two_people() -> None:
    """Same account (6.6 bits) and the same given name (6.4) outweigh a surname that disagrees (-4.3): the
    contact default vetoes a surname that disagrees beyond typos, as it does a given name."""
    anna = {"contact_id": "K1", "customer_id": "C1", "first_name": "Anna", "last_name": "Peters"}
    colleague = {**anna, "contact_id": "K2", "last_name": "Zimmermann"}
    deduper = Deduper(DedupeConfig().for_contacts())
    assert [deduper.process(r).golden_id for r in (anna, colleague)] == ["K1", "K2"]
    without = Deduper(DedupeConfig(vetoes=("first_name", "email")).for_contacts())
    assert [without.process(r).golden_id for r in (anna, colleague)] == ["K1", "K1"]


def test_a_contacts_section_declares_the_contact_matcher_and_unset_keys_keep_the_contact_defaults() -> None:
    from processors.config import DedupeSettings

    assert DedupeSettings().contacts is True
    assert DedupeSettings().contact_matcher() == DedupeConfig().for_contacts()
    own = DedupeSettings.model_validate({"contacts": {
        "vetoes": ["first_name", "email"], "identifier_fields": ["national_id"], "match_probability": 0.99,
        "blocking": [{"name": "pa", "parts": [{"field": "customer_id", "transform": "value"}]}]}})  # fmt: skip
    matcher = own.contact_matcher()
    defaults = DedupeConfig().for_contacts()
    assert matcher.entity == "contact" and own.contacts
    assert matcher.veto_fields() == {"first_name", "email"} and matcher.match_probability == 0.99
    assert [p.name for p in matcher.blocking] == ["pa"] and matcher.comparisons == defaults.comparisons
    assert "national_id" in {c.field for c in matcher.effective_comparisons() if c.identifier}
    assert own.matcher().vetoes is None, "the account matcher keeps its own settings"
    with pytest.raises(ValueError, match="vetos"):
        DedupeSettings.model_validate({"contacts": {"vetos": ["email"]}})


def test_a_contact_identifier_links_two_accounts_a_name_alone_cannot() -> None:
    from processors.config import DedupeSettings

    anna = {"contact_id": "K1", "customer_id": "C1", "first_name": "Anna", "last_name": "Peters",
            "national_id": "123456789"}  # fmt: skip
    other = {**anna, "contact_id": "K2", "customer_id": "C2", "first_name": None}
    plain = Deduper(DedupeSettings().contact_matcher())
    assert [plain.process(r).golden_id for r in (anna, other)] == ["K1", "K2"]
    with_id = Deduper(DedupeSettings.model_validate({"contacts": {"identifier_fields": ["national_id"]}})
                      .contact_matcher())  # fmt: skip
    assert [with_id.process(r).golden_id for r in (anna, other)] == ["K1", "K1"]


def test_a_shared_e_mail_lifts_the_name_vetoes_of_contacts_and_the_rules_floor_still_holds() -> None:
    """A short form or two typos in one name part veto a pair; the same personal mailbox outweighs them, while two
    colleagues behind one role mailbox stay apart by the e-mail rule's own name floor. Accounts (a household's
    mailbox) and ``name_vetoes_yield_to: []`` keep the veto, and a shared phone (a switchboard) never lifts it."""
    catherine = {"contact_id": "K1", "customer_id": "C1", "first_name": "Catherine", "last_name": "Payet",
                "email": "catherine_payet@example.com", "phone": "+33101939764"}  # fmt: skip
    cathy = {**catherine, "contact_id": "K2", "customer_id": "C2", "first_name": "Cathy", "phone": None}
    by_phone = {**cathy, "contact_id": "K3", "email": None, "phone": catherine["phone"]}
    far = {**cathy, "contact_id": "K6", "first_name": "Kate"}  # below the rule's floor: another name
    anna = {"contact_id": "K4", "customer_id": "C1", "first_name": "Anna", "last_name": "Peters",
            "email": "info@acme.example"}  # fmt: skip
    tom = {**anna, "contact_id": "K5", "first_name": "Tom"}

    def goldens(config: DedupeConfig, *records: dict[str, Any]) -> list[str]:
        deduper = Deduper(config)
        return [deduper.process(r).golden_id for r in records]

    contacts = DedupeConfig().for_contacts()
    assert contacts.effective_name_veto_overrides() == ("email",)
    assert DedupeConfig().effective_name_veto_overrides() == ()
    assert goldens(contacts, catherine, cathy) == ["K1", "K1"]
    assert goldens(contacts, catherine, by_phone) == ["K1", "K3"]
    assert goldens(contacts, catherine, far) == ["K1", "K6"]
    assert goldens(contacts, anna, tom) == ["K4", "K5"]
    off = DedupeConfig(name_vetoes_yield_to=()).for_contacts()
    assert goldens(off, catherine, cathy) == ["K1", "K2"]
    from processors.config import DedupeSettings

    section = DedupeSettings.model_validate({"contacts": {"name_vetoes_yield_to": []}}).contact_matcher()
    assert section.effective_name_veto_overrides() == ()
