"""The exit codes every crmflow command uses, so a script or a CI job can tell failures apart."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    NOT_RECONCILED = 1  # the run finished, but counts do not add up (or letters failed again on replay)
    CONFIG = 2  # the config, an env var or an input file must be fixed first
    INFRASTRUCTURE = 3  # Kafka, the registry or PostgreSQL unreachable; resume once it is back
    INTERRUPTED = 130  # SIGINT/SIGTERM; resume with --run-id
