"""``make test``: the whole suite in about half the wall time of one pytest process, on one shared stack.

1. Start the local stack (or find it running), so the parallel workers share it instead of racing to start it.
2. ``pytest -n WORKERS -m "not serial"``: unit, integration and e2e tests over ``WORKERS`` processes (xdist,
   whole files per worker, in collection order: the session datasets, migrations and module fixtures are
   built once per worker). Every test already uses its own topics, groups and databases, so workers never
   see each other's data.
3. ``pytest -m serial``: the tests that disturb the shared stack itself (PostgreSQL restarted...), alone.
4. Stop the stack if step 1 started it.
5. ``pytest -n 2 -m secure`` with ``CRMFLOW_STACK=local-secure`` on a secure local stack of its own (TLS,
   SASL/SCRAM, ACLs, least-privilege roles; the plain stack's ports plus 100, its own home), started for it
   and stopped after it, so the two stacks' JVMs never compete for the two cores.

With ``CRMFLOW_STACK=docker`` each pytest process starts its own containers, so the suite runs in one process.
Arguments are passed to both pytest runs; the exit code is the first failure's.
"""

from __future__ import annotations

import os
import subprocess
import sys

from crmflow.settings import stack_settings
from crmflow.stack import get_stack


def main(args: list[str]) -> int:
    settings = stack_settings()
    pytest = [sys.executable, "-m", "pytest"]
    if settings.stack == "docker":
        return subprocess.call([*pytest, *args])
    # Three on two cores: most e2e time is waiting on Kafka, the registry and PostgreSQL. Measured on this
    # project's 2-core machine (other work running beside it): 2 workers 12 min 14 s, 3 workers 9:44-10:38.
    workers = os.environ.get("PYTEST_WORKERS", "3")
    stack = get_stack(settings)
    started = settings.stack == "local" and not all(p.running for p in stack.status())
    stack.up()
    try:
        # In collection order (e2e, integration, unit), not xdist's default of the files with the most tests
        # first: the long e2e files (one to three tests each) start first and the many short unit files fill
        # the end, so both workers finish together instead of one running the last long file alone.
        first = subprocess.call([*pytest, "-n", workers, "--dist", "loadfile", "--no-loadscope-reorder",
                                 "-m", "not serial and not secure", *args])  # fmt: skip
        second = subprocess.call([*pytest, "-m", "serial and not secure", *args])
    finally:
        if started:
            stack.down()
    third = secure_part(args) if settings.stack == "local" else 5
    # 5: no test selected (a filter in args left a part empty) is not a failure
    return first or (0 if second == 5 else second) or (0 if third == 5 else third)


def secure_part(args: list[str]) -> int:
    """``pytest -m secure`` on a secure local stack of its own (ports + 100), started and stopped here."""
    from crmflow.stack.secure import sibling_settings

    s = sibling_settings(stack_settings())
    env = {**os.environ, "CRMFLOW_STACK": "local-secure", "CRMFLOW_HOME": str(s.home),
           "CRMFLOW_KAFKA_PORT": str(s.kafka_port), "CRMFLOW_KAFKA_CONTROLLER_PORT": str(s.kafka_controller_port),
           "CRMFLOW_REGISTRY_PORT": str(s.registry_port), "CRMFLOW_POSTGRES_PORT": str(s.postgres_port)}
    stack = [sys.executable, "-m", "crmflow", "stack"]
    try:
        if subprocess.call([*stack, "up"], env=env) != 0:
            return 1  # what did start is stopped below, so it holds no port for the next run
        # Two workers: its e2e tests (a migration, the SIGKILL tests, the PII gate) mostly wait on the stack;
        # measured: 75 s of tests where one process takes about 125 s.
        return subprocess.call([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadfile",
                                "-m", "secure or also_secure", *args], env=env)  # fmt: skip
    finally:
        subprocess.call([*stack, "down"], env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
