"""The Avro contract's schema files, the subjects they live under, and registering them.

Schema files under ``schemas/`` are parsed once (:func:`load_schema` caches). Every file goes to its own
subject, by default the record's full name (RecordNameStrategy, ``io.crmflow.target.Account``), with a
per-subject compatibility level; topic subjects (``<topic>-value``, TopicNameStrategy) are registered by
the codecs of the stages that write those topics. Subject naming is a plain, swappable function.

Registration is safe to repeat: the registry hands back the id of an equal schema already under the
subject (``normalize`` makes Apicurio, which otherwise compares text, ignore formatting as Confluent does).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField
from fastavro import parse_schema

from crmflow.exceptions import ConfigError, TerminalError, TransientError

logger = logging.getLogger(__name__)

SCHEMAS_DIR_ENV = "CRMFLOW_SCHEMAS_DIR"

Compatibility = Literal[
    "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE", "NONE"
]


class SchemaFileError(ConfigError):
    """A schema file is missing or is not valid Avro; the message names the file."""


class RegistryUnavailableError(TransientError):
    """The schema registry could not be reached or answered with a server error; retry later."""


class RegistryRefusedError(TerminalError):
    """The schema registry answered a request with a client error (4xx); retrying will not help."""


class IncompatibleSchemaError(RegistryRefusedError):
    """The registry refused a schema because it breaks the subject's compatibility level."""

    def __init__(self, subject: str, path: Path | None, detail: str) -> None:
        super().__init__(
            f"registry refused {path or 'schema'} under subject {subject}: incompatible with the versions "
            f"already registered ({detail}); make the change compatible (add fields with defaults) or "
            "use a new subject"
        )
        self.subject = subject
        self.path = path


# ------------------------------------------------------------------------------------------ schema files


@dataclass(frozen=True)
class ParsedSchema:
    """An Avro schema, parsed once.

    ``schema_str`` is the compact JSON sent to the registry (stable under re-formatting of the file);
    ``parsed`` is fastavro's parsed form, ready for ``schemaless_writer``/``schemaless_reader``.
    """

    full_name: str
    path: Path | None
    schema_str: str
    parsed: Any = field(compare=False, repr=False)

    @classmethod
    def from_str(cls, schema_str: str, path: Path | None = None) -> ParsedSchema:
        raw = json.loads(schema_str)
        compact = json.dumps(raw, separators=(",", ":"), ensure_ascii=False)
        parsed = parse_schema(raw)
        name = parsed["name"] if isinstance(parsed, dict) and "name" in parsed else str(parsed)
        return cls(full_name=name, path=path, schema_str=compact, parsed=parsed)

    @property
    def name(self) -> str:
        """The record name without namespace (``Account``)."""
        return self.full_name.rpartition(".")[2]

    @property
    def namespace(self) -> str:
        return self.full_name.rpartition(".")[0]

    def registry_schema(self) -> Schema:
        return Schema(self.schema_str, "AVRO")


def schemas_dir() -> Path:
    """The ``schemas/`` directory: ``$CRMFLOW_SCHEMAS_DIR``, else the one at the repository root."""
    env = os.environ.get(SCHEMAS_DIR_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise SchemaFileError(f"{SCHEMAS_DIR_ENV}={env} is not a directory")
        return path
    # crmflow/registry.py -> the repository root (an editable install or a checkout on sys.path).
    path = Path(__file__).resolve().parent.parent / "schemas"
    if not path.is_dir():
        raise SchemaFileError(
            f"no schemas directory at {path}; set {SCHEMAS_DIR_ENV} to the repository's schemas/ folder"
        )
    return path


def schema_files(directory: Path | None = None) -> list[Path]:
    """Every ``*.avsc`` under ``directory`` (default :func:`schemas_dir`), sorted by relative path."""
    root = directory or schemas_dir()
    return sorted(root.rglob("*.avsc"), key=lambda p: p.relative_to(root).as_posix())


def _resolve(name_or_path: str | Path) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix == ".avsc" and (candidate.is_absolute() or candidate.exists()):
        return candidate.resolve()
    root = schemas_dir()
    path = root / (candidate if candidate.suffix == ".avsc" else Path(f"{candidate}.avsc"))
    if not path.is_file():
        known = ", ".join(p.relative_to(root).with_suffix("").as_posix() for p in schema_files(root))
        raise SchemaFileError(f"no schema {str(name_or_path)!r} under {root}; known: {known}")
    return path.resolve()


@lru_cache(maxsize=128)
def _load_path(path: Path) -> ParsedSchema:
    try:
        return ParsedSchema.from_str(path.read_text(encoding="utf-8"), path=path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # fastavro's SchemaParseException is a ValueError; schema text holds no PII.
        raise SchemaFileError(f"cannot parse Avro schema {path}: {exc}") from exc


def load_schema(name_or_path: str | Path) -> ParsedSchema:
    """Load and parse a schema once: a name like ``"target/account"`` or a path to an ``.avsc`` file."""
    return _load_path(_resolve(name_or_path))


def clear_schema_cache() -> None:
    """Forget parsed schemas (tests that edit schema files or switch ``CRMFLOW_SCHEMAS_DIR``)."""
    _load_path.cache_clear()


# ---------------------------------------------------------------------------------------- subject naming

SubjectNameFn = Callable[[str, MessageField | str], str]


def topic_subject(topic: str, field: MessageField | str = MessageField.VALUE) -> str:
    """TopicNameStrategy: ``<topic>-value`` (or ``-key``)."""
    return f"{topic}-{field}"


def record_subject(schema: ParsedSchema) -> str:
    """RecordNameStrategy: the record's full name, ``io.crmflow.target.Account``."""
    return schema.full_name


# ---------------------------------------------------------------------------------------- registry calls


def _transport_errors() -> tuple[type[Exception], ...]:
    # confluent-kafka talks HTTP through httpx or its successor httpx2, whichever it found installed.
    errors: list[type[Exception]] = [OSError]
    for module in ("httpx", "httpx2"):
        try:
            errors.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


TRANSPORT_ERRORS = _transport_errors()
"""Exceptions a registry client raises when the registry cannot be reached at all."""


def registry_failure(exc: Exception, what: str) -> RegistryUnavailableError | RegistryRefusedError:
    """Our error for a failed registry call: unreachable or 5xx is transient, any other answer terminal.

    ``what`` says what crmflow was doing ("fetching schema id 7"); it ends up in the message.
    """
    if not isinstance(exc, SchemaRegistryError):
        return RegistryUnavailableError(f"schema registry unreachable while {what}: {exc}")
    status = exc.http_status_code
    if status is None or status < 0 or status >= 500:
        return RegistryUnavailableError(f"schema registry failed while {what}: {exc}")
    return RegistryRefusedError(f"schema registry refused {what}: HTTP {status}, {exc.error_message}")


@dataclass(frozen=True)
class Registered:
    """One schema as the registry now holds it."""

    subject: str
    schema_id: int
    version: int | None
    compatibility: str
    path: Path | None
    full_name: str


def register_schema(
    client: SchemaRegistryClient,
    schema: ParsedSchema,
    *,
    subject: str | None = None,
    compatibility: Compatibility | None = "BACKWARD",
) -> Registered:
    """Register ``schema`` under ``subject`` (default :func:`record_subject`) and set its compatibility.

    The level is set first, so the new version is already checked against it. ``None`` leaves it alone.
    """
    subject = subject or record_subject(schema)
    what = f"registering {schema.path or schema.full_name} as {subject}"
    try:
        if compatibility is not None:
            _set_compatibility(client, subject, compatibility)
        schema_id = client.register_schema(subject, schema.registry_schema(), normalize_schemas=True)
        # The register answer carries only the id; the lookup adds the version.
        found = client.lookup_schema(subject, schema.registry_schema(), normalize_schemas=True)
        level = client.get_compatibility(subject)
    except SchemaRegistryError as exc:
        if exc.http_status_code == 409:
            raise IncompatibleSchemaError(subject, schema.path, exc.error_message) from exc
        raise registry_failure(exc, what) from exc
    except TRANSPORT_ERRORS as exc:
        raise registry_failure(exc, what) from exc
    result = Registered(
        subject=subject,
        schema_id=int(schema_id),
        version=int(found.version) if found.version is not None else None,
        compatibility=level,
        path=schema.path,
        full_name=schema.full_name,
    )
    logger.info("registered %s id=%d compatibility=%s", subject, result.schema_id, level)
    return result


#: How often a subject's compatibility is set again after another client's write got there first.
_RULE_RACE_TRIES = 3


def _set_compatibility(client: SchemaRegistryClient, subject: str, level: Compatibility) -> None:
    """Set ``subject``'s compatibility level. Services that start together on a fresh registry set it at the same
    moment, and Apicurio answers all but the first creation of the subject's rule with 409 ("A rule named
    'COMPATIBILITY' already exists"); the rule exists then, so setting it again updates it."""
    for attempt in range(_RULE_RACE_TRIES):
        try:
            client.set_compatibility(subject, level)
            return
        except SchemaRegistryError as exc:
            if exc.http_status_code != 409 or attempt == _RULE_RACE_TRIES - 1:
                raise registry_failure(exc, f"setting {subject}'s compatibility to {level}") from exc
            logger.debug("compatibility rule of %s created meanwhile by another client; setting it again", subject)


def register_all(
    client: SchemaRegistryClient,
    schemas_dir: Path | None = None,
    compatibility: Compatibility | None = "BACKWARD",
    *,
    subject_name: Callable[[ParsedSchema], str] = record_subject,
) -> list[Registered]:
    """Register every ``.avsc`` under ``schemas_dir`` (default: the repository's ``schemas/``).

    Returns one :class:`Registered` per file, in path order. Stops at the first refused schema.
    """
    return [
        register_schema(client, schema, subject=subject_name(schema), compatibility=compatibility)
        for schema in (load_schema(path) for path in schema_files(schemas_dir))
    ]
