"""The deduplication settings: blocking limits, match weights and thresholds, survivorship rules.

Scores are additive points, in the spirit of Fellegi-Sunter log-odds: a field that agrees adds its
weight, a field that is present on both sides and disagrees adds its (negative) mismatch weight, a field
missing on either side adds nothing. A fuzzy match needs both name parts to pass their similarity floors
and the sum to reach ``match_threshold``. Vetoes (different birth dates, incompatible names for a
deterministic rule) win over every score: a wrong merge is worse than a missed one.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

DeterministicRule = Literal["email", "phone"]
#: How a group's surviving value is chosen, most important first (a non-null value always beats null).
#: ``most_complete``: more non-null fields in the group, a full first name over an initial;
#: ``source_priority``: the record's ``source`` earlier in ``DedupeConfig.source_priority``;
#: ``most_recent`` / ``earliest``: by ``customer_since`` (null counts as oldest / latest).
Criterion = Literal["most_complete", "source_priority", "most_recent", "earliest"]
DedupeEntity = Literal["account", "contact"]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


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
    swap_penalty: float = Field(default=0.05, ge=0.0, le=1.0, description="subtracted when first/last are swapped")
    street_similarity: float = Field(default=0.9, ge=0.0, le=1.0)
    street_mismatch_below: float = Field(default=0.5, ge=0.0, le=1.0)
    match_threshold: float = Field(
        default=6.5,
        description="points a fuzzy match must reach; with the default weights an exact name needs one more of: "
        "the birth date; the street with its house number; postal code and city",
    )
    weights: MatchWeights = MatchWeights()
    veto_birth_date_conflict: bool = True
    source_priority: tuple[str, ...] = Field(default=(), description="record `source` values, most trusted first")
    survivorship: Survivorship = Survivorship()
    hash_block_keys: bool = Field(
        default=True, description="store block keys as BLAKE2b digests, so no e-mail or phone is a table key"
    )
    block_key_secret: SecretStr | None = Field(
        default=None, description="key of the BLAKE2b digest (a pepper): digests cannot be tested by guessing"
    )
