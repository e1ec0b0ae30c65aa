"""The migration config: one YAML file that says what to read, how to clean and map it, where to write.

Validated by pydantic: one frozen model per component, unknown keys are errors. Loading errors name the
file, the key path (``entities.account.fields[2].transform``), the line and what was expected.
Source paths may use ``${VAR}`` and ``${VAR:-default}`` (nothing else is expanded) and resolve against
the config file's directory. Secrets never appear in the file: ``dsn_env`` names the environment variable
that holds a DSN. ``deploy/demo/crmflow.yaml`` is a complete, commented example::

    run: {name: demo, base_currency: USD}
    kafka: {topic_prefix: crmflow.demo, partitions: 6}
    sources:
      customers: {kind: csv, path: "${DATA:-data}/customers.csv", entity: account, key: Customer_ID,
                  segment: {field: Region, in: [EU]}}
      contacts: {kind: table, dsn_env: LEGACY_DSN, table: legacy.contacts, entity: contact, key: contact_id,
                 parent: {entity: account, field: customer_id}}
    reference: {currency_rates: {EUR: 1.08}, lookups: {priorities: {P1: High}}}
    entities:
      account:
        fields:
          - {source: [First_Name, Last_Name], target: Full_Name, transform: [merge, name_case]}
          - {source: Phone, target: phone, transform: {phone_e164: {region_from: country}}, missing: flag}
          - {source: Job, target: job_title, missing: {default: Not Available}}
    target: {kind: postgres, dsn_env: TARGET_DSN, batch_size: 500}
"""

from __future__ import annotations

import difflib
import os
from decimal import Decimal
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError

from crmflow.configbase import (
    ConfigLoadError,
    CurrencyCode,
    EnvVarName,
    FrozenModel,
    Identifier,
    KafkaConfig,
    KeyPath,
    Problem,
    RunConfig,
    Severity,
    expand_env,
    format_path,
)
from crmflow.entities import EntityName
from crmflow.exceptions import ConfigError
from crmflow.pii import PiiConfig
from processors.config import DebeziumInput, DedupeSettings, ReferenceConfig
from processors.mapping import Finding, mapping_problems
from processors.transforms.base import ReferenceData
from processors.transforms.spec import EntityMapping, FieldMapping, TransformStep
from producers.config import CdcConfig, ParentRef, SegmentConfig, SourceConfig
from sinks.config import TargetConfig

__all__ = [
    "ConfigLoadError", "CurrencyCode", "DedupeSettings", "EntityMapping", "EnvVarName", "FieldMapping",
    "Identifier", "KafkaConfig", "KeyPath", "MigrationConfig", "ParentRef", "Problem", "ReferenceConfig",
    "RunConfig", "SegmentFilter", "Severity", "SourceConfig", "TargetConfig", "TransformStep", "ValidationConfig",
    "check_config",
    "expand_env", "format_path", "load_config",
]  # fmt: skip

#: The ``sources.<name>.segment`` section, under its former name.
SegmentFilter = SegmentConfig


class ValidationConfig(FrozenModel):
    """The ``validation:`` section: the thresholds ``crmflow validate`` gates on (exit 1 when one is not met)
    and what ``crmflow cutover status`` accepts."""

    accuracy: float = Field(default=1.0, ge=0.0, le=1.0, description="least share of target records whose "
                            "every field equals the value recomputed from the source")
    completeness: float = Field(default=1.0, ge=0.0, le=1.0, description="least share of expected source "
                                "records found in the target (landed, merged, or dead-lettered)")
    accepted_dlq_rules: tuple[str, ...] = Field(default=(), description="dead-letter rules whose open letters do "
                                                "not block the cutover (e.g. orphan)")
    max_lag: int = Field(default=0, ge=0, description="records the pipeline's consumer groups (processor, sink) "
                         "may lag behind for a GO")
    max_cdc_lag_bytes: int = Field(default=16 * 1024 * 1024, ge=0, description="WAL bytes the CDC slot may lag "
                                   "behind the legacy database's current position for a GO")
    drift_sample: int = Field(default=200, ge=1, description="records cutover status re-validates afresh")


class MigrationConfig(FrozenModel):
    version: Literal[1] = 1
    run: RunConfig
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    sources: dict[Identifier, SourceConfig] = Field(min_length=1)
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    entities: dict[EntityName, EntityMapping] = Field(min_length=1)
    target: TargetConfig | None = None
    pii: PiiConfig | None = Field(default=None, description="PII masking: profile, key, per-field policies")
    dedupe: DedupeSettings | None = Field(default=None, description="deduplication of accounts into golden records")
    cdc: CdcConfig | None = Field(default=None, description="change capture from the legacy database (crmflow cdc)")
    debezium: DebeziumInput | None = Field(default=None, description="Debezium's change topics as input instead")
    validation: ValidationConfig = Field(default_factory=ValidationConfig,
                                         description="thresholds of crmflow validate and crmflow cutover status")

    _file: Path | None = PrivateAttr(default=None)
    _lines: dict[KeyPath, int] = PrivateAttr(default_factory=dict)

    @property
    def file(self) -> Path | None:
        """The file the config was loaded from (None when built in code)."""
        return self._file

    def line_of(self, path: KeyPath) -> int | None:
        """Line of the longest prefix of ``path`` written in the file (None when unknown)."""
        for end in range(len(path), -1, -1):
            line = self._lines.get(path[:end])
            if line is not None:
                return line
        return None

    @property
    def dedupe_enabled(self) -> bool:
        """Whether the processor deduplicates accounts (a ``dedupe`` section, enabled, and accounts mapped)."""
        return self.dedupe is not None and self.dedupe.enabled and "account" in self.entities

    def reference_data(self) -> ReferenceData:
        rates = {code: Decimal(rate) for code, rate in self.reference.currency_rates.items()}
        rates.setdefault(self.run.base_currency, Decimal(1))
        return ReferenceData(base_currency=self.run.base_currency, rates=rates, lookups=self.reference.lookups)


# ------------------------------------------------------------------------------------------- loading


def _compose(text: str, file: Path) -> tuple[Any, dict[KeyPath, int]]:
    """Parse YAML (safe tags only) and note the 1-based line of every key and list item."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[KeyPath, int] = {}

        def build(node: yaml.Node, path: KeyPath) -> Any:
            lines.setdefault(path, node.start_mark.line + 1)
            if isinstance(node, yaml.MappingNode):
                loader.flatten_mapping(node)  # YAML merge keys (<<)
                out: dict[Any, Any] = {}
                for key_node, value_node in node.value:
                    key = loader.construct_object(key_node, deep=True)
                    if key in out:  # PyYAML would silently keep the last one
                        raise yaml.MarkedYAMLError(problem=f"duplicate key {key!r}", problem_mark=key_node.start_mark)
                    lines[(*path, key)] = key_node.start_mark.line + 1
                    out[key] = build(value_node, (*path, key))
                return out
            if isinstance(node, yaml.SequenceNode):
                return [build(item, (*path, i)) for i, item in enumerate(node.value)]
            return loader.construct_object(node, deep=True)

        return (build(node, ()) if node is not None else None), lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigLoadError([Problem("error", f"not valid YAML: {exc.problem}", "", file, line)]) from None
    finally:
        loader.dispose()


def _problems(exc: ValidationError, file: Path, lines: dict[KeyPath, int]) -> list[Problem]:
    out: list[Problem] = []
    for err in exc.errors(include_url=False, include_input=False):
        loc: KeyPath = tuple(err["loc"])
        # Keep the parts of pydantic's location that are keys of the file (drop union-member tags), plus
        # the name of a missing key.
        path: KeyPath = ()
        for i, part in enumerate(loc):
            if (*path, part) in lines or (err["type"] == "missing" and i == len(loc) - 1):
                path = (*path, part)
        line = next((lines[path[:end]] for end in range(len(path), -1, -1) if path[:end] in lines), None)
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = _unknown_key_message(loc)
        elif err["type"] == "missing":
            message = "required key is missing"
        elif err["type"] in ("literal_error", "enum"):
            message = message.replace("Input should be", "expected")
        out.append(Problem("error", message, format_path(path), file, line))
    return out


def _section_models(loc: KeyPath) -> list[type[BaseModel]]:
    """The models a validation location points into (``loc`` without the unknown key itself).

    Walks the field annotations from :class:`MigrationConfig`: a model's field by name or alias, a dict's
    value, a tuple's or list's item; parts that match nothing (pydantic's union tags) are skipped.
    """

    def expand(tp: Any) -> list[Any]:
        origin = get_origin(tp)
        if origin is Annotated:
            return expand(get_args(tp)[0])
        if origin is Union or origin is UnionType:
            return [t for arg in get_args(tp) for t in expand(arg)]
        return [tp]

    def step(tp: Any, part: str | int) -> Any:
        origin = get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
            for name, info in tp.model_fields.items():
                if part in (name, info.alias):
                    return info.annotation
        elif origin is dict and isinstance(part, str):
            return get_args(tp)[1]
        elif origin in (tuple, list) and isinstance(part, int):
            args = [a for a in get_args(tp) if a is not Ellipsis]
            return args[0] if len(args) == 1 else (args[part] if part < len(args) else None)
        return None

    current: list[Any] = [MigrationConfig]
    for part in loc:
        nxt = [t for tp in current for e in expand(tp) if (t := step(e, part)) is not None]
        if nxt:
            current = nxt
    return [t for tp in current for t in expand(tp) if isinstance(t, type) and issubclass(t, BaseModel)]


def _unknown_key_message(loc: KeyPath) -> str:
    """``unknown key 'kye': did you mean 'key'? this section has: kind, entity, key, ...``"""
    key = loc[-1] if loc else ""
    allowed: list[str] = []
    for model in _section_models(loc[:-1]):
        for name, info in model.model_fields.items():
            shown = info.alias or name
            if shown not in allowed:
                allowed.append(shown)
    if not allowed:
        return f"unknown key {str(key)!r} (a typo?); this section does not have it"
    folded = {a.lower(): a for a in allowed}
    close = difflib.get_close_matches(str(key).lower(), list(folded), n=1, cutoff=0.6)
    hint = f": did you mean {folded[close[0]]!r}?" if close else " (a typo?);"
    return f"unknown key {str(key)!r}{hint} this section has: {', '.join(allowed)}"


def load_config(path: str | Path) -> MigrationConfig:
    """Read and validate a migration config; raises :class:`ConfigLoadError` listing every problem."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problem = Problem("error", f"cannot read the config: {exc.__class__.__name__}", "", file)
        raise ConfigLoadError([problem]) from None
    data, lines = _compose(text, file)
    if not isinstance(data, dict):
        raise ConfigLoadError([Problem("error", "expected a mapping of sections (run, sources, entities...)",
                                       "", file, 1)])  # fmt: skip
    try:
        config = MigrationConfig.model_validate(data, context={"base_dir": file.resolve().parent})
    except ValidationError as exc:
        raise ConfigLoadError(_problems(exc, file, lines)) from None
    config._file = file
    config._lines = lines
    return config


# ------------------------------------------------------------------------------------------ checking


def _shared_entities(config: MigrationConfig) -> list[Finding]:
    """A warning per entity that several sources feed: their ids may collide, and the snapshot keeps the
    first record of a key and dead-letters the others (``duplicate_key``)."""
    by_entity: dict[str, list[str]] = {}
    for name, src in config.sources.items():
        by_entity.setdefault(src.entity, []).append(name)
    return [
        ("warning", ("sources", names[1], "entity"),
         f"sources {', '.join(names)} all feed entity {entity}: their ids may collide; a record whose key an "
         "earlier record of the run had is dead-lettered as duplicate_key (the first one read lands)")
        for entity, names in by_entity.items() if len(names) > 1
    ]  # fmt: skip


def _header_findings(config: MigrationConfig) -> list[Finding]:
    """Each source's header (files that exist; tables whose DSN variable is set) against the columns the
    mapping reads: a missing one is an error at the field mapping's line, naming the file and the column.
    JSONL files have no header and are not checked."""
    from producers.exceptions import ProducerError, SourceUnavailableError
    from producers.headers import missing_columns, read_header
    from producers.sources import source_spec

    out: list[Finding] = []
    for name, src in config.sources.items():
        where: KeyPath = ("sources", name)
        if src.kind == "jsonl" or (src.path is not None and not src.path.exists()):
            continue
        if src.kind == "table" and not (src.dsn_env and os.environ.get(src.dsn_env)):
            continue
        try:
            spec = source_spec(name, src)
            header = read_header(spec)
        except SourceUnavailableError as exc:
            out.append(("warning", (*where, "table"), f"columns not checked: {exc}"))
            continue
        except (ProducerError, ConfigError) as exc:
            out.append(("error", (*where, "path" if src.path is not None else "table"), str(exc)))
            continue
        if header is None:
            continue
        for miss in missing_columns(config, spec, header):
            out.append(("error", miss.path,
                        f"column {miss.column!r} is not in the header of {miss.where} (source {name}); "
                        f"the header has: {', '.join(miss.header)}"))  # fmt: skip
    return out


def check_config(config: MigrationConfig, *, schemas_dir: Path | None = None) -> list[Problem]:
    """Everything wrong with a loaded config that loading cannot see, without running anything.

    Errors: entity mappings that do not compile (see :func:`processors.mapping.mapping_problems`:
    targets missing from the model or the Avro schema, unmapped required fields, unknown lookup tables...),
    sources feeding an unmapped entity, parents that are not mapped, a mapped column (or segment field)
    missing from a source's header (CSV files that exist, tables whose DSN variable is set), an unreadable
    header. Warnings: missing source files (demo data may come later), unset DSN variables, entities no
    source feeds, entities several sources feed (their ids may collide: duplicates are dead-lettered).
    """

    found: list[Finding] = list(mapping_problems(config, schemas_dir=schemas_dir))
    fed = {src.entity for src in config.sources.values()}
    for name, src in config.sources.items():
        where: KeyPath = ("sources", name)
        if src.entity not in config.entities:
            found.append(("error", (*where, "entity"), f"no mapping for entity {src.entity!r} under entities"))
        if src.parent is not None and src.parent.entity not in config.entities:
            found.append(("error", (*where, "parent"), f"parent entity {src.parent.entity!r} is not mapped"))
        if src.path is not None and not src.path.exists():
            found.append(("warning", (*where, "path"), f"file {src.path} does not exist (yet)"))
        if src.dsn_env is not None and not os.environ.get(src.dsn_env):
            found.append(("warning", (*where, "dsn_env"), f"environment variable {src.dsn_env} is not set"))
    for entity in config.entities:
        if entity not in fed:
            found.append(("warning", ("entities", entity), "no source feeds this entity"))
    found.extend(_shared_entities(config))
    found.extend(_header_findings(config))
    if config.target is not None and config.target.dsn_env and not os.environ.get(config.target.dsn_env):
        found.append(("warning", ("target", "dsn_env"),
                      f"environment variable {config.target.dsn_env} is not set here; migrate and sink will refuse "
                      "to run until it is (remove target.dsn_env to write to the crmflow stack's database)"))
    return [
        Problem(severity, message, format_path(path), config.file, config.line_of(path))
        for severity, path, message in found
    ]
