"""How a config describes one target field: its source(s), transform chain and missing/invalid policies.

These are the ``entities.<entity>.fields[]`` items of the migration config (:mod:`crmflow.config`);
:mod:`processors.mapping` compiles them. A transform is written as a name, ``{name: {params}}``,
``{name: scalar}`` (the transform's shorthand parameter) or a list of those; parameters are validated
against the transform's own model when the config loads.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from crmflow.configbase import invalid
from processors.transforms.registry import TRANSFORM_NAMES, TRANSFORMS, TransformName


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _param_errors(exc: ValidationError, model: type[BaseModel]) -> str:
    known = ", ".join(model.model_fields) or "none"
    return "; ".join(
        f"unknown parameter {e['loc'][0]!r} (parameters: {known})"
        if e["type"] == "extra_forbidden"
        else f"{'.'.join(map(str, e['loc'])) or 'parameters'}: {e['msg']}"
        for e in exc.errors()
    )


class TransformStep(_Model):
    """One step of a field's transform chain: a registered transform and its parameters."""

    name: TransformName
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        """Accept ``name``, ``{name: {params}}`` and ``{name: scalar}`` (the transform's shorthand)."""
        params: Any
        if isinstance(value, str):
            name, params = value, {}
        elif isinstance(value, dict) and len(value) == 1 and "name" not in value:
            ((name, params),) = value.items()
        else:
            return value
        transform = TRANSFORMS.get(name) if isinstance(name, str) else None
        if transform is None:
            raise invalid(f"unknown transform {name!r}; expected one of: {', '.join(TRANSFORM_NAMES)}")
        if params is None:
            params = {}
        elif not isinstance(params, dict):
            if transform.shorthand is None:
                raise invalid(f"transform {name!r} takes its parameters as a mapping")
            params = {transform.shorthand: params}
        try:
            transform.validate_params(params)
        except ValidationError as exc:
            raise invalid(f"bad parameters for transform {name!r}: {_param_errors(exc, transform.params)}") from None
        return {"name": name, "params": params}


class DefaultValue(_Model):
    default: Any


class FieldMapping(_Model):
    """``{source, target, transform, missing, invalid}``: how one target field is filled."""

    source: str | tuple[str, ...] | None = Field(default=None, description="source field(s); none for constant")
    target: str = Field(description="target field; case-insensitive (Full_Name = full_name)")
    transform: tuple[TransformStep, ...] = Field(default=(TransformStep(name="none"),))
    missing: Literal["flag", "reject", "allow"] | DefaultValue | None = Field(
        default=None, description="flag (<field>_missing), reject, allow (null), {default: v}; "
        "unset: reject if required else allow",
    )  # fmt: skip
    invalid: Literal["flag", "reject"] | None = Field(
        default=None, description="a transform's rule fails: flag (<field>_<suffix>) or reject; "
        "unset: reject if required else flag",
    )  # fmt: skip

    @field_validator("target")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.strip().lower()

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise invalid("expected a source field name or a list of field names")

    @field_validator("missing", mode="before")
    @classmethod
    def _missing(cls, value: Any) -> Any:
        if value is None or value in ("flag", "reject", "allow"):
            return value
        if isinstance(value, dict) and list(value) == ["default"]:
            return DefaultValue(default=value["default"])
        raise invalid("expected flag, reject, allow or {default: <value>}")

    @field_validator("transform", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | dict) else value

    @property
    def sources(self) -> tuple[str, ...]:
        if self.source is None:
            return ()
        return (self.source,) if isinstance(self.source, str) else self.source

    def missing_action(self) -> Literal["flag", "reject", "allow", "default"] | None:
        return "default" if isinstance(self.missing, DefaultValue) else self.missing

    def missing_default(self) -> Any:
        return self.missing.default if isinstance(self.missing, DefaultValue) else None


class EntityMapping(_Model):
    fields: tuple[FieldMapping, ...] = Field(min_length=1)
