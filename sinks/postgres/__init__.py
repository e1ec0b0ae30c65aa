"""The PostgreSQL target CRM: schema migrations and the batched, idempotent upsert sink."""

from sinks.postgres.migrate import apply_migrations, load_migrations
from sinks.postgres.sink import PostgresSink

__all__ = ["PostgresSink", "apply_migrations", "load_migrations"]
