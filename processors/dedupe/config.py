"""The deduplication settings: blocking limits, match weights and thresholds, survivorship rules.

Scores are additive points, in the spirit of Fellegi-Sunter log-odds: a field that agrees adds its
weight, a field that is present on both sides and disagrees adds its (negative) mismatch weight, a field
missing on either side adds nothing. A fuzzy match needs both name parts to pass their similarity floors
and the sum to reach ``match_threshold``. Vetoes (different birth dates, incompatible names for a
deterministic rule) win over every score: a wrong merge is worse than a missed one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

DeterministicRule = Literal["email", "phone"]
#: How a group's surviving value is chosen, most important first (a non-null value always beats null).
#: ``most_complete``: more non-null fields in the group, a full first name over an initial;
#: ``source_priority``: the record's ``source`` earlier in ``DedupeConfig.source_priority``;
#: ``most_recent`` / ``earliest``: by ``customer_since`` (null counts as oldest / latest).
Criterion = Literal["most_complete", "source_priority", "most_recent", "earliest"]
DedupeEntity = Literal["account", "contact"]

_FROZEN = ConfigDict(frozen=True, extra="forbid")

#: How two values of a field are compared (see :mod:`processors.dedupe.comparators`).
Comparator = Literal["exact", "name", "jaro_winkler", "levenshtein", "date", "numeric", "token_set", "postcode"]
#: How a field's value becomes part of a block key (see :mod:`processors.dedupe.blocking`).
KeyTransform = Literal["value", "fold", "nysiis", "metaphone", "soundex", "initial", "tail", "year", "digits"]
Scoring = Literal["points", "fellegi_sunter"]


class MatchWeights(BaseModel):
    """Points per field; ``*_mismatch`` weights apply when both sides have a value and it differs."""

    model_config = _FROZEN

    name: float = Field(default=4.0, description="times the name similarity (0..1)")
    birth_date: float = 4.0
    email: float = Field(default=6.0, description="same e-mail (matters when e-mail is no deterministic rule)")
    phone: float = Field(default=4.0, description="same phone (matters when phone is no deterministic rule)")
    postal_code: float = 2.0
    postal_code_mismatch: float = -1.0
    city: float = 1.0
    city_mismatch: float = -0.5
    street: float = Field(default=2.5, description="when the street token similarity reaches street_similarity")
    street_mismatch: float = Field(default=-1.0, description="when it is below street_mismatch_below")
    email_mismatch: float = -2.0
    phone_mismatch: float = -2.0
    country_mismatch: float = -2.0
    parent: float = Field(default=3.0, description="contacts: same parent account")
    parent_mismatch: float = -1.0


class Survivorship(BaseModel):
    """Per field group, the criteria that pick the member whose values the golden record keeps.

    Groups are picked as a whole (first, last and full name from one member; street, city, postal code,
    country and region from one member), so a golden record never mixes two people's address parts.
    Ties after the criteria go to the larger record id (the newer legacy record).
    """

    model_config = _FROZEN

    name: tuple[Criterion, ...] = ("most_complete", "source_priority", "most_recent")
    address: tuple[Criterion, ...] = ("most_complete", "source_priority", "most_recent")
    email: tuple[Criterion, ...] = ("source_priority", "most_recent")
    phone: tuple[Criterion, ...] = ("source_priority", "most_recent")
    birth_date: tuple[Criterion, ...] = ("source_priority", "most_recent")
    customer_since: tuple[Criterion, ...] = ("earliest",)
    job_title: tuple[Criterion, ...] = ("source_priority", "most_recent")
    parent: tuple[Criterion, ...] = ("source_priority", "most_recent")


class ComparisonSpec(BaseModel):
    """One field comparison of the Fellegi-Sunter scorer: a comparator, its levels and (optionally) hand weights.

    The comparator maps two values to a *level*: 0 is exact agreement, then one level per entry of ``levels``
    (similarity floors for ``name``/``jaro_winkler``/``token_set``, most similar first; maximum edit distances
    for ``levenshtein``; maximum absolute differences for ``numeric``; shared prefix lengths for ``postcode``,
    after a one-typo level), and the last level is disagreement. ``date`` has the levels exact, transposed
    day/month or one-digit typo, disagreement. A value missing on either side adds nothing.
    """

    model_config = _FROZEN

    field: str = Field(description="target field of the entity (any mapped field)")
    comparator: Comparator = "exact"
    levels: tuple[float, ...] = Field(default=(), description="thresholds; empty: the comparator's defaults")
    identifier: bool = Field(
        default=False,
        description="an identifier (national id, tax id, legacy number): agreement is strong evidence, "
        "disagreement weighs at most `identifier_disagreement_bits` (ids carry typos); it is also a block key",
    )
    m: tuple[float, ...] | None = Field(default=None, description="hand-set P(level | match), one per level")
    u: tuple[float, ...] | None = Field(default=None, description="hand-set P(level | non-match), one per level")


class BlockPart(BaseModel):
    """One component of a block key: a field and how its value is reduced."""

    model_config = _FROZEN

    field: str
    transform: KeyTransform = "fold"


class BlockingPass(BaseModel):
    """One blocking pass: records that share its key (every part present) are compared.

    ``kind: sorted_neighbourhood`` keys on the first ``prefix`` letters of the concatenated, folded parts:
    the neighbourhood of a record in the sorted name index (see :mod:`processors.dedupe.blocking` for why
    a streaming, order-independent neighbourhood is a key range rather than a window of ranks).
    """

    model_config = _FROZEN

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,15}$", description="short label, the block key's kind")
    parts: tuple[BlockPart, ...] = Field(min_length=1)
    kind: Literal["key", "sorted_neighbourhood"] = "key"
    prefix: int = Field(default=6, ge=2, description="sorted_neighbourhood: key letters that define a neighbourhood")
    unordered: bool = Field(
        default=False,
        description="sort the reduced parts before joining them, so two records whose fields are swapped (given "
        "name and surname) share the key",
    )


def _p(field: str, transform: KeyTransform = "fold") -> BlockPart:
    return BlockPart(field=field, transform=transform)


#: Default passes besides the built-in keys: none relies on e-mail or phone.
DEFAULT_BLOCKING: tuple[BlockingPass, ...] = (
    BlockingPass(name="ph_names", parts=(_p("last_name", "nysiis"), _p("first_name", "nysiis"))),
    BlockingPass(name="ph_last_year", parts=(_p("last_name", "nysiis"), _p("birth_date", "year"))),
    BlockingPass(name="ph_first_year", parts=(_p("first_name", "nysiis"), _p("birth_date", "year"))),
    BlockingPass(name="pc_year", parts=(_p("postal_code", "value"), _p("birth_date", "year"))),
    BlockingPass(name="birth", parts=(_p("birth_date", "value"), _p("postal_code", "value"))),
    # The address alone (street with house number, postcode): a record whose birth year is missing or mistyped
    # and whose name lost a part or changed its first letter shares no other key with its duplicates.
    BlockingPass(name="street_pc", parts=(_p("street", "fold"), _p("postal_code", "value"))),
    BlockingPass(name="sn_names", kind="sorted_neighbourhood", prefix=9, parts=(_p("last_name"), _p("first_name"))),
)

#: Default passes of contacts besides the built-in keys (e-mail, phone, parent account + initials). A contact
#: has no birth date or address, and one entered again on another account shares neither the parent nor,
#: often, an e-mail or phone: only the name links it. NYSIIS of both parts in either order (a swap); the
#: surname's NYSIIS with the given name's initial ("M. Berger"); one part as written with the other's letters
#: after the first (a typo in that first letter changes every phonetic code and the initials); within one
#: account, either part's NYSIIS alone (the other part missing or mistyped); and a neighbourhood over the names.
#: Then the account alone (``pa``): every contact of one account meets every other, whatever their names (two
#: variations, a first-letter typo in each part); an account with more than ``max_block_size`` contacts closes
#: that block and keeps the account-and-name passes. And the job title with either name part's NYSIIS: a contact
#: entered again on another account with a name part missing, or both varied, often keeps its title.
DEFAULT_CONTACT_BLOCKING: tuple[BlockingPass, ...] = (
    BlockingPass(name="ph_names", parts=(_p("last_name", "nysiis"), _p("first_name", "nysiis")), unordered=True),
    BlockingPass(name="ph_last_ini", parts=(_p("last_name", "nysiis"), _p("first_name", "initial"))),
    BlockingPass(name="last_ftail", parts=(_p("last_name"), _p("first_name", "tail"))),
    BlockingPass(name="first_ltail", parts=(_p("first_name"), _p("last_name", "tail"))),
    BlockingPass(name="pa_last", parts=(_p("customer_id", "value"), _p("last_name", "nysiis"))),
    BlockingPass(name="pa_first", parts=(_p("customer_id", "value"), _p("first_name", "nysiis"))),
    BlockingPass(name="sn_names", kind="sorted_neighbourhood", prefix=9, parts=(_p("last_name"), _p("first_name"))),
    BlockingPass(name="pa", parts=(_p("customer_id", "value"),)),
    BlockingPass(name="job_first", parts=(_p("job_title"), _p("first_name", "nysiis"))),
    BlockingPass(name="job_last", parts=(_p("job_title"), _p("last_name", "nysiis"))),
)

#: Default comparisons of contacts: the names, e-mail, phone, the parent account (its golden id) and the job.
DEFAULT_CONTACT_COMPARISONS: tuple[ComparisonSpec, ...] = (
    ComparisonSpec(field="first_name", comparator="name", levels=(0.92, 0.85)),
    ComparisonSpec(field="last_name", comparator="name", levels=(0.92, 0.85)),
    ComparisonSpec(field="email", comparator="exact"),
    ComparisonSpec(field="phone", comparator="exact"),
    # The parent account: a contact's duplicate is nearly always on the same account, so another account costs
    # about 5 bits, and an exact name alone (13 bits) then falls short: namesakes on two accounts stay apart.
    ComparisonSpec(field="customer_id", comparator="exact", m=(0.97, 0.03), u=(0.01, 0.99)),
    ComparisonSpec(field="job_title", comparator="exact"),
)

#: Default comparisons of the Fellegi-Sunter scorer (accounts); identifiers are added when the config
#: names them in ``identifier_fields``.
DEFAULT_COMPARISONS: tuple[ComparisonSpec, ...] = (
    ComparisonSpec(field="first_name", comparator="name", levels=(0.92, 0.85)),
    ComparisonSpec(field="last_name", comparator="name", levels=(0.92, 0.85)),
    ComparisonSpec(field="birth_date", comparator="date"),
    ComparisonSpec(field="postal_code", comparator="postcode", levels=(3,)),
    # No city: it says again what an agreeing postcode said, and Fellegi-Sunter adds both as if independent
    # (two people of one postcode then start 22 bits ahead). Add it where postcodes are often missing.
    ComparisonSpec(field="street", comparator="token_set", levels=(0.85,)),
    ComparisonSpec(field="email", comparator="exact"),
    ComparisonSpec(field="phone", comparator="exact"),
)


#: Vetoes of the Fellegi-Sunter scorer when ``vetoes`` is unset: a given name that disagrees beyond typos,
#: initials, nicknames' shared letters and swaps is another person of the household.
DEFAULT_FS_VETOES: tuple[str, ...] = ("first_name",)

#: Contacts add the e-mail: two contacts whose addresses both exist and differ are two people, or one person in
#: two roles that a CRM keeps apart (a colleague of the same name, a contact who moved to another customer).
#: Names, a job title and phones are shared by namesakes; a mailbox is not. And the surname: every contact of an
#: account is compared with every other (the ``pa`` pass), and the same account (6.6 bits) with one equal name
#: part (6.4) would otherwise outweigh a surname that disagrees beyond typos (-4.3): two colleagues who share a
#: given name, or a surname taken for a given name, are not one person.
DEFAULT_FS_CONTACT_VETOES: tuple[str, ...] = ("first_name", "last_name", "email")


class ContactMatching(BaseModel):
    """The contact matcher's own settings (``dedupe.contacts`` as a section), where they differ from what
    :meth:`DedupeConfig.for_contacts` derives from the account settings; an unset key keeps that. ::

        contacts:
          identifier_fields: [national_id]    # compared as an identifier and blocked on (contacts: none)
          vetoes: [first_name, email]         # the surname no longer vetoes
          blocking:                           # replaces the contact default passes
            - {name: pa, parts: [{field: customer_id, transform: value}]}
            - {name: ph_names, parts: [{field: last_name, transform: nysiis}, {field: first_name, transform: nysiis}]}

    ``comparisons`` replaces the contact default comparisons the same way (any field of the contact entity).
    """

    model_config = _FROZEN

    blocking: tuple[BlockingPass, ...] | None = Field(default=None, description="the contact passes (unset: defaults)")
    builtin_blocking: bool | None = Field(default=None, description="keep the built-in contact keys")
    comparisons: tuple[ComparisonSpec, ...] | None = Field(
        default=None, description="the contact comparisons, over any mapped contact field (unset: defaults)"
    )
    vetoes: tuple[str, ...] | None = Field(default=None, description="fields whose disagreement vetoes a pair")
    match_probability: float | None = Field(default=None, gt=0.0, lt=1.0)
    max_block_size: int | None = Field(default=None, ge=2)
    deterministic_rules: tuple[DeterministicRule, ...] | None = None
    name_vetoes_yield_to: tuple[DeterministicRule, ...] | None = Field(
        default=None, description="rules whose agreement lifts the name vetoes (unset: [email] for contacts)"
    )
    identifier_fields: tuple[str, ...] | None = Field(
        default=None, description="contact fields compared as identifiers and blocked on (national_id, tax_id)"
    )


class DedupeConfig(BaseModel):
    """Settings of one :class:`~processors.dedupe.deduper.Deduper` (one entity)."""

    model_config = _FROZEN

    entity: DedupeEntity = "account"
    max_block_size: int = Field(
        default=64,
        ge=2,
        description="a block that holds this many record ids is closed: later records neither join it nor "
        "are compared with its members (the key is too common to identify anyone)",
    )
    max_cluster_size: int = Field(default=50, ge=2, description="a merge that would exceed this is refused")
    deterministic_rules: tuple[DeterministicRule, ...] = ("email", "phone")
    deterministic_min_name_similarity: float = Field(
        default=0.7,
        ge=0.0,
        le=1.0,
        description="a deterministic rule is vetoed when first or last name similarity is below this",
    )
    min_first_name_similarity: float = Field(default=0.8, ge=0.0, le=1.0)
    min_last_name_similarity: float = Field(default=0.85, ge=0.0, le=1.0)
    initial_similarity: float = Field(
        default=0.85, ge=0.0, le=1.0, description="similarity of an initial ('J.') and a name starting with it"
    )
    one_edit_similarity: float = Field(
        default=0.85, ge=0.0, le=1.0, description="at least this for one typo after an equal first letter (kim/kmi)"
    )
    first_letter_similarity: float = Field(
        default=0.85,
        ge=0.0,
        le=1.0,
        description="at least this for two names of three letters or more that differ in their first letter only "
        "(karl/garl, kyle/cyle: a slip of sound or key that Jaro-Winkler, with no shared prefix, scores below the "
        "floors); 0 switches it off",
    )
    swap_penalty: float = Field(default=0.05, ge=0.0, le=1.0, description="subtracted when first/last are swapped")
    street_similarity: float = Field(default=0.9, ge=0.0, le=1.0)
    street_mismatch_below: float = Field(default=0.5, ge=0.0, le=1.0)
    match_threshold: float = Field(
        default=6.5,
        description="points a fuzzy match must reach; with the default weights an exact name needs one more of: "
        "the birth date; the street with its house number; postal code and city",
    )
    weights: MatchWeights = MatchWeights()
    veto_birth_date_conflict: bool | None = Field(
        default=None,
        description="two birth dates that disagree (beyond a typo, with the `date` comparator) never match, and a "
        "cluster never holds two; false switches both off. Unset: on with `points` scoring, off with "
        "`fellegi_sunter` (there a disagreeing date weighs its bits, and a date typed wholly wrong is common)",
    )
    vetoes: tuple[str, ...] | None = Field(
        default=None,
        description="further fields whose disagreement (the comparison's last level) vetoes a match. Unset: "
        "`first_name` with `fellegi_sunter` (else surname, street and postcode, added as independent evidence, "
        "merge a household), none with `points` (its name floors do that job); `[]` switches it off",
    )
    name_vetoes_yield_to: tuple[DeterministicRule, ...] | None = Field(
        default=None,
        description="deterministic rules whose agreement lifts the name vetoes (`first_name`, `last_name`): the "
        "rule's own floor (`deterministic_min_name_similarity`) then judges the names, so a nickname, an initial "
        "or two typos in one part no longer refuse it, and a name that is another person's still does. Unset: "
        "`[email]` for contacts (a personal mailbox outweighs a given name written another way; two colleagues "
        "behind one role mailbox stay apart by the floor), none for accounts (a household shares an address and "
        "often a mailbox); `[]` switches it off",
    )
    missing_name_threshold_bonus: float = Field(
        default=2.0, description="points mode: a fuzzy match on one name part (the other missing) needs this more"
    )
    scoring: Scoring = Field(
        default="fellegi_sunter",
        description="`fellegi_sunter` (default): `comparisons` in bits; `points`: the hand weights above",
    )
    comparisons: tuple[ComparisonSpec, ...] = DEFAULT_COMPARISONS
    identifier_fields: tuple[str, ...] = Field(
        default=(), description="fields compared as identifiers (and blocked on), e.g. national_id, tax_id"
    )
    identifier_disagreement_bits: float = Field(default=-2.0, le=0.0)
    model_file: Path | None = Field(
        default=None, description="m/u probabilities estimated by `python -m crmflow.evaluation.dedupe_train`"
    )
    match_probability: float = Field(
        default=0.95,
        gt=0.0,
        lt=1.0,
        description="fellegi_sunter: posterior match probability a compared pair must reach (prior: the model's "
        "share of matches among blocked pairs)",
    )
    builtin_blocking: bool = Field(default=True, description="keep the built-in keys (e-mail, phone, initials...)")
    blocking: tuple[BlockingPass, ...] = DEFAULT_BLOCKING
    source_priority: tuple[str, ...] = Field(default=(), description="record `source` values, most trusted first")
    survivorship: Survivorship = Survivorship()
    hash_block_keys: bool = Field(
        default=True, description="store block keys as BLAKE2b digests, so no e-mail or phone is a table key "
        "(where blocks are stored: a state kept whole in one store, its JSON dump; the stream derives its blocks "
        "in memory and stores none, and digests their keys only under block_key_secret)",
    )
    block_key_secret: SecretStr | None = Field(
        default=None, description="key of the BLAKE2b digest (a pepper): digests cannot be tested by guessing"
    )

    @model_validator(mode="after")
    def _consistent(self) -> DedupeConfig:
        names = [p.name for p in self.blocking]
        if len(set(names)) != len(names):
            raise ValueError("blocking pass names must be unique")
        fields = [c.field for c in self.comparisons]
        if len(set(fields)) != len(fields):
            raise ValueError("comparisons: one comparison per field")
        for spec in self.comparisons:
            if (spec.m is None) != (spec.u is None):
                raise ValueError(f"comparisons.{spec.field}: give both m and u, or neither")
        return self

    def effective_comparisons(self) -> tuple[ComparisonSpec, ...]:
        """``comparisons`` plus an exact-or-one-typo identifier comparison per ``identifier_fields`` entry."""
        have = {c.field for c in self.comparisons}
        extra = tuple(
            ComparisonSpec(field=f, comparator="levenshtein", levels=(1,), identifier=True)
            for f in self.identifier_fields
            if f not in have
        )
        marked = tuple(
            c.model_copy(update={"identifier": True}) if c.field in self.identifier_fields else c
            for c in self.comparisons
        )
        return marked + extra

    def for_contacts(self, own: ContactMatching | None = None) -> DedupeConfig:
        """The contact matcher of these settings: the same scorer, thresholds and vetoes on the contact entity,
        with the contact defaults for comparisons and passes where these settings keep the account defaults
        (a contact has no birth date or address), the surname and e-mail as further vetoes where ``vetoes`` is
        unset, no model file (it is trained per entity) and no identifiers; then whatever ``own`` (the config's
        ``dedupe.contacts`` section) sets."""
        update: dict[str, object] = {"entity": "contact", "model_file": None, "identifier_fields": ()}
        if self.comparisons == DEFAULT_COMPARISONS:
            update["comparisons"] = DEFAULT_CONTACT_COMPARISONS
        if self.blocking == DEFAULT_BLOCKING:
            update["blocking"] = DEFAULT_CONTACT_BLOCKING
        if self.vetoes is None and self.scoring == "fellegi_sunter":
            update["vetoes"] = DEFAULT_FS_CONTACT_VETOES
        if own is not None:
            update.update(own.model_dump(exclude_none=True))
        return DedupeConfig.model_validate({**self.model_dump(), **update})

    def veto_fields(self) -> frozenset[str]:
        birth = self.veto_birth_date_conflict
        if birth is None:
            birth = self.scoring == "points"
        return frozenset(self.effective_vetoes()) | ({"birth_date"} if birth else frozenset())

    def effective_name_veto_overrides(self) -> tuple[DeterministicRule, ...]:
        """``name_vetoes_yield_to``, or when unset the entity's default: ``email`` for contacts, none for accounts."""
        if self.name_vetoes_yield_to is not None:
            return self.name_vetoes_yield_to
        return ("email",) if self.entity == "contact" else ()

    def effective_vetoes(self) -> tuple[str, ...]:
        """``vetoes``, or when unset the scorer's default: ``first_name`` for Fellegi-Sunter, none for points."""
        if self.vetoes is not None:
            return self.vetoes
        return DEFAULT_FS_VETOES if self.scoring == "fellegi_sunter" else ()
