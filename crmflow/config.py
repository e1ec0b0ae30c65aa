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
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from crmflow import topics
from crmflow.exceptions import ConfigError
from crmflow.pii import PiiConfig
from processors.dedupe.config import DedupeConfig
from processors.entities import EntityName
from processors.mapping import Finding, mapping_problems
from processors.transforms.base import ReferenceData, clean_text
from processors.transforms.spec import EntityMapping, FieldMapping, TransformStep, invalid

__all__ = [
    "ConfigLoadError", "EntityMapping", "FieldMapping", "KafkaConfig", "MigrationConfig", "Problem",
    "ReferenceConfig", "RunConfig", "SourceConfig", "TargetConfig", "TransformStep", "check_config",
    "expand_env", "load_config",
]  # fmt: skip

Severity = Literal["error", "warning"]
KeyPath = tuple[str | int, ...]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _env_name(value: Any) -> Any:
    if isinstance(value, str) and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        # Never echo it: it may be a DSN with a password pasted in by mistake.
        raise invalid("expected the NAME of an environment variable holding the DSN, never the DSN itself")
    return value


EnvVarName = Annotated[str, BeforeValidator(_env_name)]
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]+$")]
CurrencyCode = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]


@dataclass(frozen=True)
class Problem:
    """One finding of loading or checking a config; ``str()`` is ``file:line: severity: path: message``."""

    severity: Severity
    message: str
    path: str = ""
    file: Path | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.file and self.line else str(self.file or "<config>")
        return f"{where}: {self.severity}: {self.path + ': ' if self.path else ''}{self.message}"


class ConfigLoadError(ConfigError):
    """The config file cannot be read or is invalid; ``problems`` lists every error found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def expand_env(text: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; an unset VAR without default is a ValueError."""

    def repl(match: re.Match[str]) -> str:
        name, default = match[1], match[2]
        value = os.environ.get(name)
        if value:
            return value
        if default is None:
            raise ValueError(f"environment variable {name} is not set and ${{{name}}} has no :-default")
        return default

    return _ENV_REF.sub(repl, text)


def format_path(path: KeyPath) -> str:
    """``('entities', 'account', 'fields', 2, 'transform')`` → ``entities.account.fields[2].transform``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RunConfig(_Model):
    name: Identifier = Field(description="names the run; ids and consumer groups derive from it")
    base_currency: CurrencyCode = "USD"


class KafkaConfig(_Model):
    topic_prefix: Identifier = "crmflow"
    partitions: int = Field(default=6, ge=1)
    replication_factor: int = Field(default=1, ge=1)

    def raw_topic(self, source: str) -> str:
        return topics.raw_topic(self.topic_prefix, source)

    def mapped_topic(self, entity: str) -> str:
        return topics.mapped_topic(self.topic_prefix, entity)

    def dedupe_topic(self, entity: str) -> str:
        return topics.dedupe_topic(self.topic_prefix, entity)

    @property
    def dlq_topic(self) -> str:
        return topics.dlq_topic(self.topic_prefix)


class SegmentFilter(_Model):
    """Keep only records whose ``field`` (after the whitespace rule) is one of ``in``.

    The field name also matches in lower case (database columns), as in ``producers.sources``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    field: str
    values: tuple[str, ...] = Field(alias="in", min_length=1)

    def matches(self, raw: Mapping[str, str | None]) -> bool:
        value = raw[self.field] if self.field in raw else raw.get(self.field.lower())
        return clean_text(value) in self.values


class ParentRef(_Model):
    """A child source's reference to its parent: the source field holding the parent entity's key."""

    entity: EntityName = "account"
    field: str


class SourceConfig(_Model):
    kind: Literal["csv", "jsonl", "table"]
    entity: EntityName
    key: str = Field(description="the source's primary-key field")
    path: Path | None = Field(default=None, description="csv/jsonl: file; ${VAR:-default} expanded")
    dsn_env: EnvVarName | None = Field(default=None, description="table: env var holding the DSN")
    table: str | None = Field(default=None, description="table: [schema.]table")
    segment: SegmentFilter | None = None
    parent: ParentRef | None = None
    delimiter: str | None = Field(default=None, description="csv: field delimiter; unset: detected (, ; TAB |)")
    quotechar: str | None = Field(default=None, description="csv: quote character; unset: detected (\" or ')")
    encoding: str | None = Field(
        default=None, description="csv: text encoding (utf-8, cp1252, latin-1...); unset: utf-8, else cp1252"
    )
    dialect: Literal["auto", "excel", "excel-tab"] = Field(
        default="auto", description="csv: auto detects what is not declared; excel = comma, excel-tab = TAB"
    )

    @field_validator("delimiter", "quotechar")
    @classmethod
    def _one_char(cls, value: str | None, info: ValidationInfo) -> str | None:
        from producers.readers.dialect import check_delimiter

        if value is None:
            return None
        try:
            return check_delimiter(value, str(info.field_name))
        except ValueError as exc:
            raise invalid(str(exc).split(": ", 1)[-1]) from None

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str | None) -> str | None:
        from producers.readers.dialect import check_encoding

        if value is None:
            return None
        try:
            return check_encoding(value)
        except ValueError as exc:
            raise invalid(str(exc).split(": ", 1)[-1]) from None

    @field_validator("path", mode="before")
    @classmethod
    def _expand(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str):
            return value
        try:
            path = Path(expand_env(value))
        except ValueError as exc:
            raise invalid(str(exc)) from None
        base = (info.context or {}).get("base_dir")
        return path if path.is_absolute() or base is None else Path(os.path.normpath(Path(base) / path))

    @model_validator(mode="after")
    def _kind_fields(self) -> SourceConfig:
        if self.kind == "table" and (self.dsn_env is None or self.table is None):
            raise ValueError("a table source needs dsn_env and table")
        if self.kind != "table" and self.path is None:
            raise ValueError(f"a {self.kind} source needs path")
        if self.kind != "csv":
            declared = [k for k in ("delimiter", "quotechar", "encoding") if getattr(self, k) is not None]
            if self.dialect != "auto":
                declared.append("dialect")
            if declared:
                raise ValueError(f"{', '.join(declared)}: only csv sources have a dialect")
        return self

    def dsn(self) -> SecretStr:
        """The DSN from the environment; ConfigError naming the variable if it is unset."""
        return _secret_from_env(self.dsn_env)


def _secret_from_env(name: str | None) -> SecretStr:
    value = os.environ.get(name) if name else None
    if not value:
        raise ConfigError(f"environment variable {name} (dsn_env) is not set; export it with the DSN")
    return SecretStr(value)


class ReferenceConfig(_Model):
    currency_rates: dict[CurrencyCode, Annotated[Decimal, Field(gt=0)]] = Field(
        default_factory=dict, description="units of the base currency per unit of the keyed currency"
    )
    lookups: dict[str, dict[str, str]] = Field(default_factory=dict, description="named key → value tables")


class TargetConfig(_Model):
    """Where the mapped records land. ``dsn_env`` names the variable holding the DSN; when it is named and
    unset, every command refuses to run (never a silent fallback). Without ``dsn_env``, the target is the
    crmflow stack's own target database (``crmflow stack up``), and every command says so.
    ``schema`` is the PostgreSQL schema the CRM tables live in: two migrations that must not touch each
    other's rows name different schemas."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    kind: Literal["postgres"] = "postgres"
    dsn_env: EnvVarName | None = Field(
        default=None, description="env var holding the target database's DSN; omitted: the crmflow stack's"
    )
    schema_name: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] = Field(
        default="crm", alias="schema", description="PostgreSQL schema of the CRM tables"
    )
    batch_size: int = Field(default=500, ge=1)
    flush_interval_s: float = Field(default=1.0, gt=0)

    @property
    def uses_stack(self) -> bool:
        """True when no ``dsn_env`` is named: the target is the crmflow stack's database."""
        return self.dsn_env is None

    def dsn(self) -> SecretStr:
        """The DSN from ``dsn_env``; ConfigError naming the variable when it is unset (or not named)."""
        return _secret_from_env(self.dsn_env)


class DedupeSettings(DedupeConfig):
    """The ``dedupe`` section: the matcher's settings (:class:`~processors.dedupe.config.DedupeConfig`) plus
    whether the stage runs and where the block-key pepper comes from. ::

        dedupe:
          enabled: true
          source_priority: [crm_eu, customers]    # record `source` values, most trusted first
          match_threshold: 7.0
          weights: {birth_date: 5}
          block_key_env: CRMFLOW_BLOCK_KEY        # optional pepper for the hashed block keys

    It resolves the entity the config maps to ``account`` (from any source); the processor keeps one
    golden record per cluster and the target one account per golden record.
    """

    enabled: bool = Field(default=True, description="run the deduplication stage")
    block_key_env: EnvVarName | None = Field(
        default=None, description="env var holding the block-key pepper (never the pepper itself in the file)"
    )

    @model_validator(mode="after")
    def _no_secret_in_file(self) -> DedupeSettings:
        if self.block_key_secret is not None:
            raise ValueError("block_key_secret does not belong in the config file: name an env var in block_key_env")
        if self.entity != "account":
            raise ValueError("the stream deduplicates accounts; contacts are deduplicated by the evaluate tool only")
        return self

    def matcher(self) -> DedupeConfig:
        """The deduper's config, with the pepper read from ``block_key_env`` (when named)."""
        data = self.model_dump(exclude={"enabled", "block_key_env", "block_key_secret"})
        secret: SecretStr | None = None
        if self.block_key_env:
            value = os.environ.get(self.block_key_env)
            if not value:
                raise ConfigError(f"environment variable {self.block_key_env} (dedupe.block_key_env) is not set")
            secret = SecretStr(value)
        return DedupeConfig(**data, block_key_secret=secret)


class MigrationConfig(_Model):
    version: Literal[1] = 1
    run: RunConfig
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    sources: dict[Identifier, SourceConfig] = Field(min_length=1)
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    entities: dict[EntityName, EntityMapping] = Field(min_length=1)
    target: TargetConfig | None = None
    pii: PiiConfig | None = Field(default=None, description="PII masking: profile, key, per-field policies")
    dedupe: DedupeSettings | None = Field(default=None, description="deduplication of accounts into golden records")

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
