"""The services crmflow runs on: Kafka, a Confluent-compatible schema registry and PostgreSQL.

``get_stack()`` returns the implementation picked by ``CRMFLOW_STACK`` (local, local-secure, docker, external); all
three hand back the same :class:`~crmflow.stack.base.Endpoints`.
"""

from __future__ import annotations

from crmflow.settings import StackSettings, stack_settings
from crmflow.stack.base import Endpoints, PartStatus, Stack

__all__ = ["Endpoints", "PartStatus", "Stack", "get_stack"]


def get_stack(settings: StackSettings | None = None) -> Stack:
    """The stack implementation for ``settings.stack``; heavy imports happen only for the one picked."""
    s = settings or stack_settings()
    if s.stack == "local":
        from crmflow.stack.local import LocalStack

        return LocalStack(s)
    if s.stack == "local-secure":
        from crmflow.stack.secure import SecureStack

        return SecureStack(s)
    if s.stack == "docker":
        from crmflow.stack.docker import DockerStack

        return DockerStack(s)
    from crmflow.stack.external import ExternalStack

    return ExternalStack(s)
