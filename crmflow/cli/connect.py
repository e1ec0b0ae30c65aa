"""The connections a stage command uses: the stack's, with ``--bootstrap-servers``/``--registry-url``
overriding only the address (TLS, SASL and auth still come from the ``CRMFLOW_*`` settings)."""

from __future__ import annotations

from crmflow.connections import KafkaConnection, RegistryConnection, Stage
from crmflow.stack import Endpoints


def stage_connections(
    stage: Stage, bootstrap_servers: str | None, registry_url: str | None
) -> tuple[KafkaConnection, RegistryConnection, Endpoints | None]:
    """Kafka (with ``stage``'s principal) and the registry; the stack's endpoints when they were needed."""
    if bootstrap_servers is not None and registry_url is not None:
        kafka = KafkaConnection.from_env(bootstrap_servers=bootstrap_servers)
        return kafka.for_stage(stage), RegistryConnection.from_env(url=registry_url), None
    from crmflow.stack import get_stack

    ep = get_stack().endpoints()
    kafka, registry = ep.kafka, ep.registry
    if bootstrap_servers is not None:
        kafka = KafkaConnection.model_validate({**kafka.model_dump(), "bootstrap_servers": bootstrap_servers})
    if registry_url is not None:
        registry = RegistryConnection.model_validate({**registry.model_dump(), "url": registry_url.rstrip("/")})
    return kafka.for_stage(stage), registry, ep
