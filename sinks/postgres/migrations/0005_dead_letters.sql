-- The dead-letter ledger: one row per rejected source record and rule, whatever number of copies the
-- dead-letter topic holds (every run of the same data appends its own). Rows are derived from the topic
-- (see sinks/postgres/ledger.py): the topic stays the only write path of the stages, and this table is its
-- de-duplicated, replayable view. No personal data in clear: `origin` is a source position (file:line) or
-- topic[partition]@offset, `error` is PII-free, `digest` is an HMAC of the payload's stable content (keyed by
-- the dead-letter key), and the payload is the Fernet token of the topic.
create table crm.dead_letters (
    letter_id        text primary key,                 -- sha256(dlq_topic, entity, origin, rule, digest), hex
    dlq_topic        text not null,
    entity           text,
    origin           text not null,
    rule             text not null,
    digest           text not null,
    stage            text not null,
    field            text,
    error            text not null,
    status           text not null default 'open' check (status in ('open', 'resolved', 'superseded')),
    attempt          integer not null default 1,
    copies           integer not null default 1,       -- letters in the topic this row stands for
    run_ids          text[] not null default '{}',
    source_topic     text not null,
    source_partition integer not null,
    source_offset    bigint not null,
    source_position  text,
    key_id           text not null,
    payload          bytea not null,
    payload_key      bytea,
    dlq_partition    integer not null,                 -- the latest copy in the topic
    dlq_offset       bigint not null,
    replay_of        text references crm.dead_letters (letter_id),
    first_failed_at  timestamptz not null,
    last_failed_at   timestamptz not null,
    resolved_at      timestamptz,
    resolution       text
);
create index dead_letters_visible on crm.dead_letters (dlq_topic, status, stage, rule);

-- How far the ledger has read each dead-letter topic partition (the next offset to read).
create table crm.dead_letter_offsets (
    dlq_topic   text not null,
    partition   integer not null,
    next_offset bigint not null,
    primary key (dlq_topic, partition)
);
