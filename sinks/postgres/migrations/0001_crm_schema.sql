-- The target CRM: accounts and their contacts, sales and cases, plus the sink's own bookkeeping.
-- external_id is the legacy source id (customer_id, contact_id, sale_id, case_id); id is the CRM's own.
-- Check constraints restate the data contract, so a record the cleansing let through by mistake is
-- refused here (and dead-lettered by the sink) instead of landing.

create schema if not exists crm;

create table crm.accounts (
    id              bigint generated always as identity primary key,
    external_id     text not null unique check (external_id <> ''),
    full_name       text not null check (btrim(full_name) <> ''),
    first_name      text,
    last_name       text,
    email           text check (position('@' in email) > 1),
    phone           text check (phone ~ '^\+[1-9][0-9]{1,14}$'),
    street          text,
    city            text,
    postal_code     text,
    country         text check (country ~ '^[A-Z]{2}$'),
    region          text,
    birth_date      date,
    customer_since  date,
    quality_flags   text[] not null default '{}',
    golden_id       text,
    run_id          text not null,
    source          text not null,
    source_position text not null,
    mapped_at       timestamptz,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now()
);

create table crm.contacts (
    id              bigint generated always as identity primary key,
    external_id     text not null unique check (external_id <> ''),
    account_id      bigint not null references crm.accounts (id),
    customer_id     text not null,
    full_name       text not null check (btrim(full_name) <> ''),
    first_name      text,
    last_name       text,
    email           text check (position('@' in email) > 1),
    phone           text check (phone ~ '^\+[1-9][0-9]{1,14}$'),
    job_title       text,
    quality_flags   text[] not null default '{}',
    golden_id       text,
    run_id          text not null,
    source          text not null,
    source_position text not null,
    mapped_at       timestamptz,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now()
);
create index contacts_account_id_idx on crm.contacts (account_id);

create table crm.sales (
    id                bigint generated always as identity primary key,
    external_id       text not null unique check (external_id <> ''),
    account_id        bigint not null references crm.accounts (id),
    customer_id       text not null,
    total_sales       numeric(18, 2) not null,
    currency          text check (currency ~ '^[A-Z]{3}$'),
    original_amount   numeric(18, 2),
    original_currency text check (original_currency ~ '^[A-Z]{3}$'),
    sale_date         date,
    product           text,
    quality_flags     text[] not null default '{}',
    golden_id         text,
    run_id            text not null,
    source            text not null,
    source_position   text not null,
    mapped_at         timestamptz,
    created_at        timestamptz not null default now(),
    updated_at        timestamptz not null default now()
);
create index sales_account_id_idx on crm.sales (account_id);

create table crm.cases (
    id                 bigint generated always as identity primary key,
    external_id        text not null unique check (external_id <> ''),
    account_id         bigint not null references crm.accounts (id),
    customer_id        text not null,
    case_creation_date date not null,
    subject            text,
    status             text,
    priority           text,
    quality_flags      text[] not null default '{}',
    golden_id          text,
    run_id             text not null,
    source             text not null,
    source_position    text not null,
    mapped_at          timestamptz,
    created_at         timestamptz not null default now(),
    updated_at         timestamptz not null default now()
);
create index cases_account_id_idx on crm.cases (account_id);

-- Which CRM row a legacy record became: (entity, source, source id) -> target id.
create table crm.xref (
    entity     text not null check (entity in ('account', 'contact', 'sale', 'case')),
    source     text not null,
    source_id  text not null,
    target_id  bigint not null,
    golden_id  text,
    run_id     text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (entity, source, source_id)
);
create index xref_target_idx on crm.xref (entity, target_id);

-- Children whose parent account is not there yet. Written in the same transaction as the batch they
-- came in, so committing the Kafka offset afterwards never loses one. A row with dead_rule set has been
-- given up on and waits only for its dead letter to be acknowledged.
create table crm.parked (
    id                 bigint generated always as identity primary key,
    entity             text not null check (entity in ('contact', 'sale', 'case')),
    external_id        text not null,
    parent_external_id text not null,
    record             jsonb not null,
    source_topic       text not null,
    source_partition   integer not null,
    source_offset      bigint not null,
    raw_key            bytea,
    raw_value          bytea not null,
    run_id             text,
    source_position    text,
    parked_at          timestamptz not null default now(),
    last_seen_at       timestamptz not null default now(),
    dead_rule          text,
    dead_field         text,
    dead_error         text,
    unique (entity, external_id)
);
create index parked_parent_idx on crm.parked (parent_external_id) where dead_rule is null;
create index parked_age_idx on crm.parked (parked_at) where dead_rule is null;
create index parked_dead_idx on crm.parked (id) where dead_rule is not null;

-- One row per flushed batch and entity: what came in, what happened to it, from which offsets.
create table crm.migration_audit (
    id          bigint generated always as identity primary key,
    run_id      text,
    stage       text not null,
    entity      text not null,
    records     integer not null,
    inserted    integer not null default 0,
    updated     integer not null default 0,
    unchanged   integer not null default 0,
    parked      integer not null default 0,
    rejected    integer not null default 0,
    offsets     jsonb not null default '{}', -- {"topic[partition]": {"first": n, "last": m}}
    started_at  timestamptz not null,
    finished_at timestamptz not null default clock_timestamp()
);
create index migration_audit_run_idx on crm.migration_audit (run_id, entity);
