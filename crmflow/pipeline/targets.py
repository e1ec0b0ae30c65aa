"""The one place every command resolves where the target CRM database is.

``migrate``, ``sink``, ``dlq replay`` and the rest call :func:`resolve_target`, so they agree: the DSN
from the config's ``target.dsn_env`` when it names one (unset is a :class:`ConfigError` naming the
variable, never a fallback), else the crmflow stack's target database. The result says which it was, in
a form that can be printed (no password).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from psycopg.conninfo import conninfo_to_dict

from crmflow.config import MigrationConfig
from crmflow.connections import PostgresConnection
from crmflow.exceptions import ConfigError
from crmflow.stack import Endpoints


@dataclass(frozen=True)
class Target:
    """A resolved target: its DSN (never printed), its schema, and where the DSN came from."""

    dsn: PostgresConnection = field(repr=False)
    schema: str
    origin: str  # "env CRMFLOW_TARGET_DSN" or "crmflow stack"

    def describe(self) -> str:
        """``postgresql://user@host:port/db (schema crm, from env X)``: no password, for logs and summaries."""
        return f"{self.dsn.describe()} (schema {self.schema}, {self.origin})"


def redact_dsn(dsn: str) -> str:
    """``postgresql://user@host:port/dbname`` of a DSN, without its password or options."""
    try:
        d = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - a malformed DSN must never be echoed
        return "<unparseable DSN>"
    host, port = d.get("host", "localhost"), d.get("port", "5432")
    return f"postgresql://{d.get('user', '')}@{host}:{port}/{d.get('dbname', '')}"


def resolve_target(cfg: MigrationConfig, endpoints: Endpoints | None) -> Target:
    """The target of ``cfg``. ``endpoints`` (the stack's) are needed only when the config names no
    ``dsn_env``; pass None to require an explicit DSN."""
    target = cfg.target
    schema = target.schema_name if target is not None else "crm"
    if target is not None and target.dsn_env:
        return Target(PostgresConnection.from_env(target.dsn_env, target.dsn()), schema, f"from env {target.dsn_env}")
    if endpoints is None:
        raise ConfigError(f"{cfg.file or 'the config'}: target.dsn_env is not set and no crmflow stack is known; "
                          "name the variable holding the target DSN in target.dsn_env")
    return Target(endpoints.target, schema, "the crmflow stack's target database")
