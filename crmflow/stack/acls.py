"""The Kafka ACLs each crmflow stage needs for one topic prefix, and no more.

Derived from what the code reads and writes (topic names from :mod:`crmflow.topics`, groups and
transactional ids from the runtimes):

- ``snapshot`` and ``cdc`` are idempotent, non-transactional producers: they create and write their raw
  resp. change topics and the DLQ (an idempotent producer needs only WRITE on a topic since Kafka 3.0,
  KIP-679, so no cluster-level IDEMPOTENT_WRITE);
- ``process`` reads raw and change topics as group ``crmflow-process-<prefix>``, writes mapped topics, the
  DLQ and its internal dedupe topic plus that topic's changelog (``<prefix>.dedupe.<entity>[.state]``,
  which it creates), restores the changelog as ``crmflow-restore-<changelog>`` and commits in transactions
  under ``crmflow-process-<prefix>-<instance>``; with ``--engine faust`` its app (id = the group) also
  keeps internal topics ``crmflow-process-<prefix>-*`` (the assignor's leader topic);
- ``sink`` reads mapped topics as ``crmflow-sink.<run>``, writes the DLQ, transactional id
  ``crmflow-sink.<run>-<instance>``;
- ``ops`` is the CLI's admin work: creating the pipeline's topics (``crmflow migrate``), reading the DLQ
  (``crmflow dlq``, group ``crmflow-dlq-reader``), replaying letters into their source topic, and reading
  the other groups' committed offsets (drain waits, ``crmflow cutover status``).

Kafka's prefixed ACLs match only the start of a name, so the grants are per topic prefix:
:func:`pipeline_acls` gives them for one, :func:`apply_acls` creates them with an admin client and
:func:`kafka_acls_commands` prints the equivalent ``kafka-acls.sh`` lines for a user's own cluster.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

Principal = Literal["snapshot", "cdc", "process", "sink", "ops"]
PRINCIPALS: tuple[Principal, ...] = ("snapshot", "cdc", "process", "sink", "ops")
ResourceKind = Literal["topic", "group", "transactional-id"]
PatternKind = Literal["literal", "prefixed"]
Operation = Literal["read", "write", "create", "describe", "describe-configs"]


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW rule: ``principal`` may do ``operation`` on resources named (or prefixed) ``name``."""

    principal: Principal
    resource: ResourceKind
    pattern: PatternKind
    name: str
    operation: Operation

    def __str__(self) -> str:
        return f"{self.operation.upper()} {self.resource} {self.pattern}:{self.name}"


def _grant(principal: Principal, resource: ResourceKind, pattern: PatternKind, name: str,
           *operations: Operation) -> list[Acl]:
    return [Acl(principal, resource, pattern, name, op) for op in operations]


def pipeline_acls(prefix: str) -> list[Acl]:
    """Every stage's ACLs for the topics of ``kafka.topic_prefix`` = ``prefix`` (sorted, no duplicates)."""
    raw, cdc, mapped, dedupe, dlq = f"{prefix}.raw.", f"{prefix}.cdc.", f"{prefix}.mapped.", f"{prefix}.dedupe.", \
        f"{prefix}.dlq"
    process_group = f"crmflow-process-{prefix}"
    acls = [
        *_grant("snapshot", "topic", "prefixed", raw, "create", "write", "describe"),
        *_grant("snapshot", "topic", "literal", dlq, "create", "write", "describe"),
        *_grant("cdc", "topic", "prefixed", cdc, "create", "write", "describe"),
        *_grant("cdc", "topic", "literal", dlq, "create", "write", "describe"),
        *_grant("process", "topic", "prefixed", raw, "read", "describe"),
        *_grant("process", "topic", "prefixed", cdc, "read", "describe"),
        *_grant("process", "topic", "prefixed", dedupe, "create", "read", "write", "describe"),
        *_grant("process", "topic", "prefixed", mapped, "write", "describe"),
        *_grant("process", "topic", "literal", dlq, "write", "describe"),
        *_grant("process", "group", "literal", process_group, "read"),
        *_grant("process", "group", "prefixed", f"crmflow-restore-{dedupe}", "read"),
        *_grant("process", "transactional-id", "prefixed", f"{process_group}-", "write", "describe"),
        *_grant("process", "topic", "prefixed", f"{process_group}-", "create", "read", "write", "describe"),
        *_grant("sink", "topic", "prefixed", mapped, "read", "describe"),
        *_grant("sink", "topic", "literal", dlq, "write", "describe"),
        *_grant("sink", "group", "prefixed", "crmflow-sink", "read"),
        *_grant("sink", "transactional-id", "prefixed", "crmflow-sink", "write", "describe"),
        *_grant("ops", "topic", "prefixed", f"{prefix}.", "create", "describe", "describe-configs"),
        *_grant("ops", "topic", "literal", dlq, "read", "write"),
        *_grant("ops", "topic", "prefixed", raw, "write"),
        *_grant("ops", "topic", "prefixed", cdc, "write"),
        *_grant("ops", "topic", "prefixed", mapped, "write"),
        *_grant("ops", "group", "literal", "crmflow-dlq-reader", "read"),
        *_grant("ops", "group", "literal", process_group, "describe"),
        *_grant("ops", "group", "prefixed", "crmflow-sink", "describe"),
    ]
    return sorted(set(acls))


def by_principal(acls: Iterable[Acl]) -> dict[Principal, list[Acl]]:
    out: dict[Principal, list[Acl]] = {p: [] for p in PRINCIPALS}
    for acl in acls:
        out[acl.principal].append(acl)
    return out


def kafka_acls_commands(prefix: str, users: dict[Principal, str], bootstrap: str = "$BOOTSTRAP",
                        command_config: str = "admin.properties") -> list[str]:
    """``kafka-acls.sh`` command lines granting :func:`pipeline_acls` to the given user names."""
    lines: list[str] = []
    groups: dict[tuple[Principal, ResourceKind, PatternKind, str], list[Operation]] = {}
    for acl in sorted(pipeline_acls(prefix), key=lambda a: PRINCIPALS.index(a.principal)):  # stage order
        groups.setdefault((acl.principal, acl.resource, acl.pattern, acl.name), []).append(acl.operation)
    for (principal, resource, pattern, name), ops in groups.items():
        op_args = " ".join(f"--operation {_CLI_OPERATION[op]}" for op in ops)
        lines.append(f"kafka-acls.sh --bootstrap-server {bootstrap} --command-config {command_config} --add "
                     f"--allow-principal User:{users[principal]} {op_args} --{resource} '{name}' "
                     f"--resource-pattern-type {pattern}")
    return lines


_CLI_OPERATION: dict[Operation, str] = {"read": "Read", "write": "Write", "create": "Create", "describe": "Describe",
                                        "describe-configs": "DescribeConfigs"}


def bindings(acls: Iterable[Acl], users: dict[Principal, str]) -> list[Any]:
    """confluent-kafka ``AclBinding``s of ``acls`` for the given user names."""
    # re-exported by confluent_kafka.admin without "as" (mypy's implicit re-export rule)
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    resource = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP,
                "transactional-id": ResourceType.TRANSACTIONAL_ID}
    pattern = {"literal": ResourcePatternType.LITERAL, "prefixed": ResourcePatternType.PREFIXED}
    operation = {"read": AclOperation.READ, "write": AclOperation.WRITE, "create": AclOperation.CREATE,
                 "describe": AclOperation.DESCRIBE, "describe-configs": AclOperation.DESCRIBE_CONFIGS}
    return [AclBinding(resource[a.resource], a.name, pattern[a.pattern], f"User:{users[a.principal]}", "*",
                       operation[a.operation], AclPermissionType.ALLOW) for a in acls]


def apply_acls(admin: Any, prefix: str, users: dict[Principal, str], timeout_s: float = 30.0) -> int:
    """Create :func:`pipeline_acls` for ``prefix`` with ``admin`` (an ``AdminClient`` of a principal allowed
    to ALTER the cluster); creating an existing ACL is a no-op. Returns how many bindings were sent."""
    wanted = bindings(pipeline_acls(prefix), users)
    for fut in admin.create_acls(wanted, request_timeout=timeout_s).values():
        fut.result()
    _await_acls(admin, wanted, timeout_s)
    log.info("granted %d Kafka ACLs for topic prefix %s", len(wanted), prefix)
    return len(wanted)


def _await_acls(admin: Any, wanted: list[Any], timeout_s: float) -> None:
    """Return once the broker describes every binding of ``wanted``. CreateAcls returns when the controller has
    committed them; the broker's authorizer applies them from the metadata log a moment later, and a client
    that uses them at once could still be refused (seen: TOPIC_AUTHORIZATION_FAILED right after a grant)."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    # None matches any name, principal and host (the stubs say str)
    every = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY,  # type: ignore[arg-type]
                             AclPermissionType.ANY)  # fmt: skip
    deadline = time.monotonic() + timeout_s
    missing = set(wanted)
    while True:
        missing -= set(admin.describe_acls(every, request_timeout=timeout_s).result())
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(missing)} granted Kafka ACLs not in effect after {timeout_s:.0f}s")
        time.sleep(0.05)
