"""Compile an entity mapping from the migration config into a fast :class:`Mapper`.

Compiling resolves everything that does not change per record – transform functions with their bound
parameters, field order (a field whose transform reads another cleaned field runs after it), missing
and invalid policies, flag names, the entity's validator – so :meth:`Mapper.map` is a tight loop.

Per field: the transform chain runs on the raw value(s) (every transform applies the whitespace rule
first; a field without transforms gets it from the mapper). A transform that
raises :class:`FieldInvalid` rejects the record (required field, or ``invalid: reject``) or nulls the
field with the flag ``<field>_<suffix>``; one that raises :class:`FieldFlagged` keeps its value and adds
the flag ``<field>_<suffix>`` (whatever the policy: the value is not invalid). A chain that ends in None
is *missing*: reject (rule ``required``), flag ``<field>_missing``, a default value, or null (``allow``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import TypeAdapter, ValidationError

import crmflow
from crmflow.entities import ENTITY_NAMES, METADATA_FIELDS, business_fields, entity_model, required_fields
from processors.config import ProcessorConfig
from processors.exceptions import FieldFlagged, FieldInvalid, MappingError, RecordRejected
from processors.transforms.base import ReferenceData, TransformContext
from processors.transforms.registry import TRANSFORMS, BoundTransform, get_transform
from processors.transforms.spec import FieldMapping

log = logging.getLogger(__name__)

STAGE: Final = "process"
MissingAction = Literal["reject", "flag", "default", "allow"]
_ABSENT: Final = object()
# Dropped from chains: identities, and a leading trim (the next transform, or the mapper when no transform
# is left, applies the whitespace rule anyway).
_NOOP_FIRST: Final = frozenset({"none", "copy", "trim"})
_NOOP_ANYWHERE: Final = frozenset({"none", "copy"})

#: ``mapper(raw_fields, meta) -> target record``; meta holds run_id, source, source_position and may hold
#: mapped_at, golden_id and quality_flags (flags found before this stage).
MapFn = Callable[[Mapping[str, str | None], Mapping[str, Any]], dict[str, Any]]


class _Field:
    """One compiled field mapping (slots: read once per record on the hot path)."""

    __slots__ = ("chain", "default", "invalid_rejects", "lower_sources", "many", "missing", "missing_flag",
                 "refs", "sources", "target")  # fmt: skip

    def __init__(self, spec: FieldMapping, required: bool) -> None:
        self.target = spec.target
        self.sources: tuple[str, ...] = spec.sources
        self.lower_sources = tuple(s.lower() for s in self.sources)
        steps = [get_transform(step.name) for step in spec.transform]
        self.many = bool(steps) and steps[0].takes_many
        if len(self.sources) > 1 and not self.many:
            raise MappingError(f"field {self.target}: several sources need a first transform that merges them")
        if not self.sources and (not steps or steps[0].needs_source):
            raise MappingError(f"field {self.target}: no source; only constant/default make a value from nothing")
        bound: list[BoundTransform] = []
        for i, (t, step) in enumerate(zip(steps, spec.transform, strict=True)):
            if t.name in _NOOP_ANYWHERE or (t.name in _NOOP_FIRST and not bound and i == 0):
                continue
            fn = t.bind(step.params)
            # Every step a distinct object: the mapper finds a step that flagged by identity (_after_flag).
            bound.append(functools.partial(fn) if any(fn is b for b in bound) else fn)
        self.chain: tuple[BoundTransform, ...] = tuple(bound)
        self.refs = frozenset(
            name.lower()
            for t, step in zip(steps, spec.transform, strict=True)
            for ref in t.field_refs
            for name in _names(step.params.get(ref))
        )
        action: MissingAction = spec.missing_action() or ("reject" if required else "allow")
        if required and action in ("flag", "allow"):
            raise MappingError(f"field {self.target} is required: missing must be reject or a default")
        self.missing = action
        self.default = spec.missing_default()
        self.missing_flag = f"{self.target}_missing"
        self.invalid_rejects = (spec.invalid or ("reject" if required else "flag")) == "reject"


def _names(param: Any) -> list[str]:
    """A field-reference parameter as a list of names (one name, a list, or absent)."""
    if param is None:
        return []
    return [str(param)] if isinstance(param, str) else [str(p) for p in param]


def _ordered(fields: list[_Field]) -> list[_Field]:
    """Config order, except that a field runs after the fields its transforms read."""
    targets = {f.target for f in fields}
    for f in fields:
        unknown = f.refs - targets
        if unknown:
            raise MappingError(f"field {f.target} reads {', '.join(sorted(unknown))}, which is not mapped")
    done: set[str] = set()
    out: list[_Field] = []
    pending = list(fields)
    while pending:
        ready = [f for f in pending if f.refs <= done]
        if not ready:
            raise MappingError(f"fields read each other in a cycle: {', '.join(f.target for f in pending)}")
        first = ready[0]
        out.append(first)
        done.add(first.target)
        pending.remove(first)
    return out


class Mapper:
    """Maps raw records of one entity; build once (:meth:`from_config`), call :meth:`map` per record."""

    def __init__(self, entity: str, fields: Sequence[FieldMapping], reference: ReferenceData) -> None:
        if entity not in ENTITY_NAMES:
            raise MappingError(f"unknown entity {entity!r}; expected one of: {', '.join(ENTITY_NAMES)}")
        self.entity = entity
        self.reference = reference
        required = required_fields(entity)
        known = set(business_fields(entity))
        compiled: list[_Field] = []
        for spec in fields:
            if spec.target not in known:
                raise MappingError(f"{entity} has no field {spec.target!r}")
            if any(f.target == spec.target for f in compiled):
                raise MappingError(f"{entity}: field {spec.target!r} is mapped twice")
            for step in spec.transform:
                for ref in get_transform(step.name).table_refs:
                    table = step.params.get(ref)
                    if table is not None and table not in reference.lookups:
                        raise MappingError(f"{entity}.{spec.target}: no lookup table {table!r} in the reference data")
            compiled.append(_Field(spec, spec.target in required))
        unmapped = required - {f.target for f in compiled}
        if unmapped:
            raise MappingError(f"{entity}: required fields not mapped: {', '.join(sorted(unmapped))}")
        self._fields = tuple(_ordered(compiled))
        # The hot loop unpacks one flat tuple per field: cheaper than attribute lookups.
        self._plan = tuple(
            (
                f.target,
                f.sources[0] if len(f.sources) == 1 and not f.many else None,
                f.lower_sources[0] if len(f.sources) == 1 and not f.many else "",
                tuple(zip(f.sources, f.lower_sources, strict=True)) if f.many else None,
                f.chain,
                None if f.missing == "allow" else f.missing,
                f.default,
                f.missing_flag,
                f.invalid_rejects,
            )
            for f in self._fields
        )
        # What each field reads (raw columns in lower case, other targets): which targets an unchanged
        # TOASTed column leaves unchanged (:meth:`unchanged_targets`).
        self._reads = tuple((f.target, frozenset(f.lower_sources), f.refs) for f in self._fields)
        self._required = required
        self._template: dict[str, Any] = dict.fromkeys(business_fields(entity))
        self._validate = entity_model(entity).__pydantic_validator__.validate_python
        log.debug("mapper compiled: %d fields", len(self._plan), extra={"stage": STAGE, "entity": entity})

    @classmethod
    def from_config(cls, config: ProcessorConfig, entity: str) -> Mapper:
        """The mapper of ``entity`` as the config maps it; raises MappingError if it cannot compile."""
        mapping = config.entities.get(entity)  # type: ignore[call-overload]
        if mapping is None:
            raise MappingError(f"the config has no mapping for entity {entity!r}")
        return cls(entity, mapping.fields, config.reference_data())

    @property
    def targets(self) -> tuple[str, ...]:
        """Mapped target fields, in the order they are computed."""
        return tuple(f.target for f in self._fields)

    def unchanged_targets(self, columns: Iterable[str]) -> frozenset[str]:
        """The target fields computed from any of the raw ``columns`` (a change left them unchanged), directly
        or through another field a transform reads."""
        lower = {c.lower() for c in columns}
        out: set[str] = set()
        if not lower:
            return frozenset()
        for target, sources, refs in self._reads:  # in computing order: a field's refs come first
            if sources & lower or refs & out:
                out.add(target)
        return frozenset(out)

    def map(self, raw: Mapping[str, str | None], meta: Mapping[str, Any]) -> dict[str, Any]:
        """The validated target record (a plain dict for Avro), or raise :class:`RecordRejected`.

        ``raw`` is keyed by the source's field names; a name missing from ``raw`` is also tried in lower
        case (database columns). ``meta``: run_id, source, source_position; optional mapped_at (default
        now, UTC), golden_id, quality_flags, and ``unchanged``: raw columns a change left unchanged (an
        unchanged TOASTed value): the fields they feed are not computed, and the record lists them in
        ``unchanged_fields`` so the sink keeps their stored values (a required one rejects the record,
        rule ``unchanged_required``).
        """
        out = self._template.copy()
        flags: list[str] = list(meta.get("quality_flags") or ())
        ctx = TransformContext(raw, out, self.reference)
        get = raw.get
        skipped = self.unchanged_targets(meta.get("unchanged") or ())
        for required in sorted(skipped & self._required):
            raise self._reject("unchanged_required", required, "required field fed by an unchanged TOASTed "
                               "column: give the table REPLICA IDENTITY FULL", meta)
        for target, source, lower, many, chain, missing, default, missing_flag, invalid_rejects in self._plan:
            if skipped and target in skipped:
                continue
            value: Any = None
            if source is not None:
                value = get(source, _ABSENT)
                if value is _ABSENT:
                    value = get(lower)
                if value is not None and not chain:  # transforms apply the whitespace rule themselves
                    value = _whitespace(value)
            elif many is not None:
                value = tuple(_raw(raw, name, low) for name, low in many)
            if chain:
                try:
                    try:
                        for step in chain:
                            value = step(value, ctx)
                    except FieldFlagged as flagged:
                        value = _after_flag(chain, step, flagged, ctx, target, flags)
                except FieldInvalid as exc:
                    if invalid_rejects:
                        raise self._reject(exc.rule, target, exc.message, meta) from None
                    flags.append(f"{target}_{exc.suffix}")
                    out[target] = None
                    continue
            if value is None and missing is not None:
                if missing == "reject":
                    raise self._reject("required", target, "required field is missing", meta)
                if missing == "flag":
                    flags.append(missing_flag)
                else:
                    value = default
            out[target] = value
        out["run_id"] = meta.get("run_id")
        out["source"] = meta.get("source")
        out["source_position"] = meta.get("source_position")
        out["mapped_at"] = meta.get("mapped_at") or datetime.now(UTC)
        out["golden_id"] = meta.get("golden_id")
        flags.sort()
        out["quality_flags"] = flags
        try:
            record: dict[str, Any] = vars(self._validate(out))
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
            loc = first["loc"]
            field = str(loc[0]) if loc else None
            raise self._reject("schema", field, f"{first['type']}: {first['msg']}", meta) from None
        if skipped:
            record = {**record, "unchanged_fields": sorted(skipped)}
        return record

    __call__ = map

    def _reject(self, rule: str, field: str | None, message: str, meta: Mapping[str, Any]) -> RecordRejected:
        return RecordRejected(
            STAGE, rule, field, message, entity=self.entity, source_position=meta.get("source_position")
        )


def _after_flag(chain: tuple[BoundTransform, ...], step: BoundTransform, flagged: FieldFlagged,
                ctx: TransformContext, target: str, flags: list[str]) -> Any:  # fmt: skip
    """Add the flag of ``step``, which kept its value, then run the rest of the chain on that value (a
    later step may flag too, or raise :class:`FieldInvalid` for the caller)."""
    i = chain.index(step)  # the steps are distinct objects (see _Field)
    while True:
        flags.append(f"{target}_{flagged.suffix}")
        value = flagged.value
        i += 1
        try:
            while i < len(chain):
                value = chain[i](value, ctx)
                i += 1
        except FieldFlagged as again:
            flagged = again
            continue
        return value


def _whitespace(value: Any) -> str | None:
    try:
        return " ".join(value.split()) or None
    except AttributeError:  # not a string (a JSON number): its text
        return " ".join(str(value).split()) or None


def _raw(raw: Mapping[str, str | None], name: str, lower: str) -> str | None:
    """The raw value of ``name`` (or of its lower-case spelling: database columns)."""
    if name in raw:
        return raw[name]
    return raw.get(lower)


def build_mappers(config: ProcessorConfig, entities: Iterable[str] | None = None) -> dict[str, MapFn]:
    """One compiled :class:`Mapper` per mapped entity (or per entity of ``entities``), keyed by entity."""
    names = list(entities) if entities is not None else list(config.entities)
    return {name: Mapper.from_config(config, name) for name in names}


# ------------------------------------------------------------------------------------ config checks

Finding = tuple[Literal["error", "warning"], tuple[str | int, ...], str]


def schemas_dir() -> Path:
    """``$CRMFLOW_SCHEMAS_DIR``, else ``schemas/`` of the repository (parent of the crmflow package)."""
    env = os.environ.get("CRMFLOW_SCHEMAS_DIR")
    return Path(env) if env else Path(crmflow.__file__).resolve().parent.parent / "schemas"


def avro_field_names(entity: str, directory: Path | None = None) -> tuple[str, ...] | None:
    """Field names of ``<schemas>/target/<entity>.avsc``; None if the file does not exist."""
    path = (directory or schemas_dir()) / "target" / f"{entity}.avsc"
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return tuple(str(f["name"]) for f in schema.get("fields", []))


def _value_problem(entity: str, field: str, value: Any) -> str | None:
    """Why ``value`` cannot be the value of ``entity.field`` (None if it can)."""
    info = entity_model(entity).model_fields[field]
    try:
        TypeAdapter(info.rebuild_annotation()).validate_python(value)
    except ValidationError as exc:
        return "; ".join(str(e["msg"]) for e in exc.errors(include_url=False))
    return None


def mapping_problems(config: ProcessorConfig, *, schemas_dir: Path | None = None) -> Iterator[Finding]:
    """What keeps each entity mapping of ``config`` from compiling or from fitting its Avro schema.

    Yields ``(severity, key path, message)``; :func:`crmflow.config.check_config` adds file and line.
    """
    lookups = config.reference.lookups
    for entity, mapping in config.entities.items():
        base: tuple[str | int, ...] = ("entities", entity)
        known = business_fields(entity)
        required = required_fields(entity)
        avro = avro_field_names(entity, schemas_dir)
        if avro is None:
            yield "error", base, f"Avro schema target/{entity}.avsc not found under {schemas_dir or 'schemas/'}"
        else:
            for name in (*known, *sorted(METADATA_FIELDS)):
                if name not in avro:
                    yield "warning", base, f"entity field {name!r} is not in target/{entity}.avsc"
        targets = [f.target for f in mapping.fields]
        errors = 0
        for i, spec in enumerate(mapping.fields):
            here = (*base, "fields", i)
            messages: list[tuple[str, str]] = []
            if spec.target in METADATA_FIELDS:
                messages.append(("target", f"{spec.target!r} is record metadata, set by the pipeline"))
            elif spec.target not in known:
                messages.append(("target", f"{entity} has no field {spec.target!r}; expected one of: "
                                           f"{', '.join(known)}"))  # fmt: skip
            elif avro is not None and spec.target not in avro:
                messages.append(("target", f"{spec.target!r} is not a field of target/{entity}.avsc"))
            if targets.index(spec.target) != i:
                messages.append(("target", f"{spec.target!r} is mapped twice"))
            steps = [TRANSFORMS[step.name] for step in spec.transform]
            for j, (t, step) in enumerate(zip(steps, spec.transform, strict=True)):
                if j and t.takes_many:
                    messages.append(("transform", f"{t.name} must be the first transform"))
                for ref in t.table_refs:
                    table = step.params.get(ref)
                    if table is not None and table not in lookups:
                        messages.append(("transform", f"{t.name}: no table {table!r} under reference.lookups"))
                for ref in t.field_refs:
                    for other in _names(step.params.get(ref)):
                        if other.lower() not in targets:
                            messages.append(("transform", f"{t.name}: {ref} names {other!r}, not mapped in {entity}"))
                if t.name == "convert_currency" and not config.reference.currency_rates:
                    yield "warning", (*here, "transform"), "convert_currency without reference.currency_rates"
            if len(spec.sources) > 1 and not (steps and steps[0].takes_many):
                messages.append(("source", "several sources need a first transform that merges them (merge)"))
            if not spec.sources and (not steps or steps[0].needs_source):
                messages.append(("source", "no source; only constant or default make a value from nothing"))
            if spec.target in required and spec.missing_action() in ("flag", "allow"):
                messages.append(("missing", f"{spec.target} is required: missing must be reject or a default"))
            if spec.missing_action() == "default" and spec.target in known:
                problem = _value_problem(entity, spec.target, spec.missing_default())
                if problem:
                    messages.append(("missing", f"the default does not fit {spec.target}: {problem}"))
            for key, message in messages:
                errors += 1
                yield "error", (*here, key), message
        unmapped = sorted(required - set(targets))
        if unmapped:
            errors += 1
            yield "error", (*base, "fields"), f"required fields of {entity} not mapped: {', '.join(unmapped)}"
        if not errors:
            try:
                Mapper.from_config(config, entity)
            except MappingError as exc:  # e.g. fields reading each other in a cycle
                yield "error", (*base, "fields"), str(exc)
