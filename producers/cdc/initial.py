"""The initial load: the captured tables as they were when the slot was created, handed over with no gap.

``CREATE_REPLICATION_SLOT ... LOGICAL pgoutput EXPORT_SNAPSHOT`` creates the slot and exports the snapshot of
its consistent point: every transaction committed before that point is in the snapshot, every later one is
decoded by the slot. A REPEATABLE READ transaction that imports the snapshot (``SET TRANSACTION SNAPSHOT``) reads
the tables as op ``r`` events (``source.snapshot`` true, ``source.lsn`` the consistent point); only then does
streaming start. Each row therefore arrives once, either as ``r`` or as a change after it.

Tables are read in primary-key order, and every ``progress_every`` rows (once Kafka acknowledged them) the last key
is checkpointed in the publication's comment (:mod:`producers.cdc.snapshot`): its first line is the load's state
(``in progress`` → ``complete``), its second the tables still to load with their last key. A restart after a crash
finishes the load from there with watermark chunks while streaming; a slot whose load is ``in progress`` without a
checkpoint (an older crmflow) is refused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from crmflow.connections import PostgresConnection, as_postgres
from producers.cdc.events import TableEvents
from producers.cdc.pgoutput import format_lsn, parse_lsn

__all__ = ["COMPLETE", "IN_PROGRESS", "create_slot_exporting", "read_tables"]

log = logging.getLogger(__name__)

IN_PROGRESS = "crmflow cdc: initial load in progress"
COMPLETE = "crmflow cdc: initial load complete"


def create_slot_exporting(cursor: Any, slot: str) -> tuple[int, str]:
    """Create the logical slot on the replication ``cursor`` (psycopg2); its consistent LSN and snapshot name.

    The snapshot stays importable until the replication connection runs its next command.
    """
    cursor.execute(f'CREATE_REPLICATION_SLOT "{slot}" LOGICAL pgoutput EXPORT_SNAPSHOT')
    _, consistent_point, snapshot_name, _ = cursor.fetchone()
    return parse_lsn(consistent_point), str(snapshot_name)


def read_tables(
    dsn: PostgresConnection | str,
    options: str,
    snapshot_name: str,
    tables: dict[str, TableEvents],
    emit: Callable[[str, dict[str, Any], dict[str, Any]], None],
    *,
    consistent_lsn: int,
    stop: threading.Event,
    progress: Callable[[str, list[str] | None, bool], None] | None = None,
    progress_every: int = 1000,
) -> bool:
    """Emit every row of ``tables`` as seen by the exported snapshot; False if ``stop`` cut it short.

    ``source.ts_ms`` of the ``r`` events is when the load started (the snapshot's time).
    """
    started_ms = int(time.time() * 1000)
    with as_postgres(dsn).connect(options=options) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        conn.execute(sql.SQL("set transaction snapshot {}").format(sql.Literal(snapshot_name)))
        for name, ev in tables.items():
            cols = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c.name)) for c in ev.table.columns)
            # qualified: ORDER BY a bare name would sort by the output column, the key's text ('10' before '9')
            key = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(k)) for k in ev.table.key)
            query = sql.SQL("select {} from {}.{} as t order by {}").format(
                cols, sql.Identifier(ev.table.schema), sql.Identifier(ev.table.name), key
            )
            key_index = [[c.name for c in ev.table.columns].index(k) for k in ev.table.key]
            rows = 0
            with conn.cursor(name=f"crmflow_cdc_load_{rows}") as cur:
                cur.itersize = 2000
                cur.execute(query)
                for values in cur:
                    if stop.is_set():
                        log.warning("initial load stopped in %s after %d rows", name, rows)
                        return False
                    emit(name, ev.key(values), ev.envelope("r", None, ev.row(values), lsn=consistent_lsn, xid=None,
                                                           commit_ms=started_ms, snapshot=True))  # fmt: skip
                    rows += 1
                    if progress is not None and rows % progress_every == 0:
                        progress(name, [str(values[i]) for i in key_index], False)
            if progress is not None:
                progress(name, None, True)
            log.info("initial load of %s: %d rows at %s", name, rows, format_lsn(consistent_lsn))
    return True
