"""``make test``: the whole suite in a fraction of the wall time of one pytest process.

1. Start the local stack (or find it running), so the parallel workers share it instead of racing to start it.
2. ``pytest -n WORKERS -m "not serial and not secure"``: unit, integration and e2e tests over ``WORKERS``
   processes (xdist, whole files per worker, in collection order: the module fixtures are built once per
   worker, the session datasets once for all, and a session migration once, by the one worker that runs
   every file that reads it). Every test already uses its own topics, groups and databases, so
   workers never see each other's data.
3. Beside step 2, from its start, one after the other, each on a stack of its own started for it and stopped
   after it (its own home under the plain stack's, sharing its downloads), its output printed once step 2 is done:
   - ``pytest -m serial``, the tests that disturb their stack itself (Kafka killed, the registry frozen,
     PostgreSQL restarted...), alone on a plain local stack on the plain ports + 200;
   - ``pytest -n 2 -m "secure or also_secure"`` with ``CRMFLOW_STACK=local-secure`` on a secure local stack
     (TLS, SASL/SCRAM, ACLs, least-privilege roles) on the plain ports + 100.
   Both spend most of their time waiting (on the outages they cause, on the stages they kill), which is
   idle CPU of the two cores step 2 does not fill. They run one after the other, not side by side: two
   stacks' JVMs starting and restarting at once slowed both parts (and a recovery the serial tests time)
   by half or more.
4. Stop the plain stack if step 1 started it.

With ``CRMFLOW_STACK=docker`` each pytest process starts its own containers, so the suite runs in one process;
on another stack (external, local-secure) the serial part runs after step 2 on that stack and there is no
secure part. Arguments are passed to every pytest run; the exit code is the first failure's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from typing import IO

from crmflow.settings import StackSettings, stack_settings
from crmflow.stack import get_stack

PYTEST = [sys.executable, "-m", "pytest"]
STACK = [sys.executable, "-m", "crmflow", "stack"]
SERIAL = ["-m", "serial and not secure"]
#: The ports of the serial part's plain stack: the plain stack's plus this (the secure part's are + 100).
SERIAL_OFFSET = 200


def main(args: list[str]) -> int:
    settings = stack_settings()
    if settings.stack == "docker":
        return subprocess.call([*PYTEST, *args])
    # Three on two cores: most e2e time is waiting on Kafka, the registry and PostgreSQL. Measured on this
    # project's 2-core machine (other work running beside it): 2 workers 12 min 14 s, 3 workers 9:44-10:38.
    workers = os.environ.get("PYTEST_WORKERS", "3")
    stack = get_stack(settings)
    started = settings.stack == "local" and not all(p.running for p in stack.status())
    stack.up()
    with tempfile.TemporaryFile("w+") as out:
        beside = Beside(settings, args, out) if settings.stack == "local" else None
        second = third = 5
        if beside is not None:
            beside.start()
        try:
            if beside is not None:
                print("the serial and the secure part run beside this one, each on its own stack (ports + "
                      f"{SERIAL_OFFSET} and + 100); their output follows this part's", flush=True)
            # Whole files per worker, and the files that share an expensive session fixture on one worker
            # (tests/conftest.py, SHARED_SESSION_FIXTURES), in collection order (e2e, integration, unit), not
            # xdist's default of the files with the most tests first: the long e2e files (one to three tests each)
            # start first and the many short unit files fill the end, so the workers finish together instead of
            # one running the last long file alone.
            first = subprocess.call([*PYTEST, "-n", workers, "--dist", "loadfile", "--no-loadscope-reorder",
                                     "-m", "not serial and not secure", *args])  # fmt: skip
            if beside is None:
                second = subprocess.call([*PYTEST, *SERIAL, *args])
        except BaseException:  # an interrupt or an error here: stop the parts beside instead of waiting for them
            if beside is not None:
                beside.cancel()
            raise
        finally:
            if beside is not None:
                second, third = beside.finish()
            if started:
                stack.down()
    # 5: no test selected (a filter in args left a part empty) is not a failure
    return first or (0 if second == 5 else second) or (0 if third == 5 else third)


def sibling_env(settings: StackSettings, offset: int, secure: bool) -> dict[str, str]:
    """The environment of a stack beside ``settings``'s: every port + ``offset``, its own home under the plain
    one's, sharing its downloads (:func:`crmflow.stack.secure.sibling_settings` for the secure one)."""
    if secure:
        from crmflow.stack.secure import sibling_settings

        s = sibling_settings(settings, offset)
    else:
        home = settings.home.expanduser().resolve()
        sibling = home / "serial-sibling"
        sibling.mkdir(parents=True, exist_ok=True)
        if not (sibling / "dist").exists() and (home / "dist").is_dir():
            (sibling / "dist").symlink_to(home / "dist")
        s = settings.model_copy(update={
            "home": sibling, "kafka_port": settings.kafka_port + offset,
            "kafka_controller_port": settings.kafka_controller_port + offset,
            "registry_port": settings.registry_port + offset, "postgres_port": settings.postgres_port + offset,
        })
    return {**os.environ, "CRMFLOW_STACK": s.stack, "CRMFLOW_HOME": str(s.home),
            "CRMFLOW_KAFKA_PORT": str(s.kafka_port), "CRMFLOW_KAFKA_CONTROLLER_PORT": str(s.kafka_controller_port),
            "CRMFLOW_REGISTRY_PORT": str(s.registry_port), "CRMFLOW_POSTGRES_PORT": str(s.postgres_port)}


class Beside:
    """The serial part, then the secure part, each on a stack of its own, in a thread beside the parallel part;
    their output goes to ``out``, printed by :meth:`finish`."""

    def __init__(self, settings: StackSettings, args: list[str], out: IO[str]) -> None:
        self.args = args
        self.serial_env = sibling_env(settings, SERIAL_OFFSET, secure=False)
        self.secure_env = sibling_env(settings, 100, secure=True)
        self.out = out
        self.codes: list[int] = []
        self._cancelled = threading.Event()
        self._child: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="beside", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> tuple[int, int]:
        """Wait for both parts (stopped early after :meth:`cancel`), print their output, return their exit
        codes."""
        try:
            self._thread.join()
        except BaseException:
            self.cancel()
            self._thread.join()
            raise
        finally:
            self.out.seek(0)
            sys.stdout.write(self.out.read())
            sys.stdout.flush()
        codes = [*self.codes, 1, 1][:2]  # a part that never ran (cancelled) failed
        return codes[0], codes[1]

    def cancel(self) -> None:
        """Stop the part running (SIGTERM to its child) and start no other; each stack is still stopped."""
        self._cancelled.set()
        with self._lock:
            if self._child is not None and self._child.poll() is None:
                self._child.terminate()

    def _call(self, argv: list[str], env: dict[str, str]) -> int:
        with self._lock:
            if self._cancelled.is_set():
                return 1
            self._child = subprocess.Popen(argv, env=env, stdout=self.out, stderr=subprocess.STDOUT, text=True)
        try:
            return self._child.wait()
        finally:
            with self._lock:
                self._child = None

    def _part(self, env: dict[str, str], pytest_args: list[str]) -> int:
        try:
            if self._call([*STACK, "up"], env) != 0:
                return 1  # what did start is stopped below, so it holds no port for the next run
            return self._call([*PYTEST, *pytest_args, *self.args], env)
        finally:
            subprocess.call([*STACK, "down"], env=env, stdout=self.out, stderr=subprocess.STDOUT)

    def _run(self) -> None:
        self.codes.append(self._part(self.serial_env, SERIAL))
        # Two workers: its e2e tests (a migration, the SIGKILL tests, the PII gate) mostly wait on the stack;
        # measured: 75 s of tests where one process takes about 125 s.
        self.codes.append(self._part(self.secure_env, ["-n", "2", "--dist", "loadfile", "-m", "secure or also_secure"]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
