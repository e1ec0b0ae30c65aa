"""How often the generator injects each quality problem, and the ``--rate name=value`` overrides.

Every rate is a probability in [0, 1], drawn independently per record (or per field where the
description says so). The defaults give a realistic dataset: about 10% of the customer records are a
further record of an already-seen person, a few percent of each cleansing problem, and about 0.2% of
the lines of each file rejected for each reject cause.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from crmflow.demo_data.exceptions import InvalidRateError, UnknownRateError

Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class QualityRates(BaseModel):
    """Injection rates of the demo dataset's quality problems."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    duplicate: Rate = Field(default=0.10, description="customer record is another record of a recent person")
    duplicate_child_mix: Rate = Field(
        default=0.5, description="child of a duplicated person points at another record of its cluster"
    )
    whitespace: Rate = Field(default=0.05, description="record has stray leading/trailing/double spaces")
    name_case: Rate = Field(default=0.03, description="names and city written in upper or lower case")
    street_abbreviation: Rate = Field(default=0.2, description="street type abbreviated (St., Ave, Rd, Str.)")
    phone_format: Rate = Field(default=0.3, description="phone in another format than the national one")
    date_format: Rate = Field(default=0.3, description="date written MM/DD/YYYY or DD.MM.YYYY instead of ISO")
    country_spelling: Rate = Field(default=0.2, description="country written as a name or in another case")
    email_case: Rate = Field(default=0.05, description="email in mixed or upper case")
    email_missing: Rate = Field(default=0.03, description="email empty")
    email_invalid: Rate = Field(default=0.02, description="email not a valid address")
    phone_missing: Rate = Field(default=0.04, description="phone empty")
    phone_invalid: Rate = Field(default=0.02, description="phone not a valid number")
    postal_code_invalid: Rate = Field(default=0.015, description="postal code not matching its country's pattern")
    country_unknown: Rate = Field(default=0.005, description="country misspelled beyond recognition")
    field_missing: Rate = Field(
        default=0.03, description="one optional field empty (street, city, postal code, a date, job title...)"
    )
    date_invalid: Rate = Field(default=0.01, description="optional date unparseable (kept, flagged)")
    date_reject: Rate = Field(default=0.002, description="required ticket date unparseable (rule date_format)")
    amount_reject: Rate = Field(default=0.002, description="sales amount unparseable (rule currency_format)")
    required_missing: Rate = Field(default=0.002, description="required field empty (rule required)")
    csv_malformed: Rate = Field(default=0.002, description="line with a wrong number of fields")
    encoding: Rate = Field(default=0.002, description="line with bytes that are not UTF-8")
    orphan: Rate = Field(
        default=0.004, description="per customer: a deleted customer whose sales/tickets remain (rule orphan)"
    )


def rate_names() -> tuple[str, ...]:
    """The names ``--rate`` accepts, in declaration order."""
    return tuple(QualityRates.model_fields)


def parse_rate_overrides(overrides: Iterable[str], base: QualityRates | None = None) -> QualityRates:
    """Apply ``name=value`` overrides to ``base`` (default rates when omitted).

    Raises :class:`UnknownRateError` (listing the valid names) for an unknown name and
    :class:`InvalidRateError` for a malformed pair or a value outside [0, 1].
    """
    base = base or QualityRates()
    values: dict[str, object] = base.model_dump()
    for item in overrides:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise InvalidRateError(f"rate override {item!r} is not name=value")
        if name not in values:
            raise UnknownRateError(name, rate_names())
        try:
            values[name] = float(raw)
        except ValueError:
            raise InvalidRateError(f"rate {name}: {raw!r} is not a number") from None
    try:
        return QualityRates.model_validate(values)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise InvalidRateError(f"invalid quality rates: {problems}") from None
