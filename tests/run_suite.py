"""``make test``: the whole suite in about half the wall time of one pytest process, on one shared stack.

1. Start the local stack (or find it running), so the parallel workers share it instead of racing to start it.
2. ``pytest -n WORKERS -m "not serial"``: unit, integration and e2e tests over ``WORKERS`` processes (xdist,
   whole files per worker, in collection order: the session datasets, migrations and module fixtures are
   built once per worker). Every test already uses its own topics, groups and databases, so workers never
   see each other's data.
3. ``pytest -m serial``: the tests that disturb the shared stack itself (PostgreSQL restarted...), alone.
4. Stop the stack if step 1 started it.

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
    workers = os.environ.get("PYTEST_WORKERS", "2")
    stack = get_stack(settings)
    started = settings.stack == "local" and not all(p.running for p in stack.status())
    stack.up()
    try:
        # In collection order (e2e, integration, unit), not xdist's default of the files with the most tests
        # first: the long e2e files (one to three tests each) start first and the many short unit files fill
        # the end, so both workers finish together instead of one running the last long file alone.
        first = subprocess.call(
            [*pytest, "-n", workers, "--dist", "loadfile", "--no-loadscope-reorder", "-m", "not serial", *args]
        )
        second = subprocess.call([*pytest, "-m", "serial", *args])
    finally:
        if started:
            stack.down()
    # 5: no test selected (a filter in args left the serial part empty) is not a failure
    return first or (0 if second == 5 else second)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
