"""Stage services as child processes, and how far a consumer group has read."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from crmflow.connections import KafkaConnection, kafka_config
from crmflow.exceptions import ConfigError, StackError
from crmflow.exitcodes import ExitCode
from crmflow.logs import cli_flags
from crmflow.runtime.watchdog import STALLED_EXIT_CODE
from crmflow.stack.process import tail

log = logging.getLogger(__name__)

#: How often a wait for a group to drain (or a one-shot service to exit) looks again.
_POLL_S = 0.2


_PR_SET_PDEATHSIG = 1

RESTARTABLE_EXIT_CODES = frozenset({1, ExitCode.INFRASTRUCTURE, STALLED_EXIT_CODE})
"""A stage's exits that a restart can fix: 1 (the sink: a dependency stayed unavailable), 3 (Kafka unusable),
75 (a Kafka call stalled)."""


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGTERM when the parent dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Service:
    """``python -m crmflow <args>`` in the background (with this process's logging options), its output in
    ``log_file``; tracks peak RSS.

    The child gets SIGTERM when this process dies (``PR_SET_PDEATHSIG``), so no stage outlives the run that
    started it, and it ignores the terminal's SIGINT (its own session): the parent decides when it stops.
    """

    def __init__(self, name: str, args: list[str], log_file: Path, env: Mapping[str, str | None], *,
                 max_restarts: int = 10) -> None:
        """``env`` is added to this process's environment; a None value removes the variable."""
        self.name = name
        self.args = args
        self.env = env
        self.log_file = log_file
        self.max_restarts = max_restarts
        self.restarts = 0
        self._restart_at: float | None = None
        self._asked: subprocess.Popen[bytes] | None = None  # the process already sent its SIGTERM
        log_file.parent.mkdir(parents=True, exist_ok=True)
        self.proc = self._spawn()
        self.peak_rss = 0
        self._cpu_ended = 0.0  # CPU seconds of the processes before a restart
        self._cpu_last = 0.0  # of the current process, as last sampled

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log_file.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "crmflow", *cli_flags(), *self.args], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=_child_env(self.env), start_new_session=True,
                preexec_fn=_die_with_parent,  # only a prctl call: safe between fork and exec
            )

    def supervise(self) -> None:
        """Like :meth:`sample`, but a stage that exited with a retriable code (:data:`RESTARTABLE_EXIT_CODES`)
        is started again, after a backoff, up to ``max_restarts`` times in all. Safe: every stage commits only
        what is durable downstream, so a restart re-reads, never loses."""
        code = self.proc.poll()
        if code is None:
            self.sample()
            return
        if code not in RESTARTABLE_EXIT_CODES or self.restarts >= self.max_restarts:
            self.sample()  # raises, naming the exit code and the log's tail
            return
        now = time.monotonic()
        if self._restart_at is None:
            self._restart_at = now + min(30.0, 2.0 * 2 ** self.restarts)
            log.warning("%s exited with %d (log: %s); restarting it in %.0fs", self.name, code, self.log_file,
                        self._restart_at - now)
        if now >= self._restart_at:
            self.restarts += 1
            self._restart_at = None
            self._cpu_ended, self._cpu_last = self._cpu_ended + self._cpu_last, 0.0
            self.proc = self._spawn()

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def sample(self) -> None:
        """Record the process's memory; raise if it died (its log's tail says why)."""
        if self.proc.poll() is not None:
            if self.proc.returncode == ExitCode.CONFIG and (why := _last_error(self.log_file)):
                raise ConfigError(f"{self.name} stopped: {why} (log: {self.log_file})")
            raise StackError(f"{self.name} exited with {self.proc.returncode} (log: {self.log_file}); its last lines:\n"
                             f"{tail(self.log_file)}")
        self.note_rss()

    def note_rss(self) -> None:
        """Record the process's memory and CPU time if it still runs."""
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(self.proc.pid)
            self.peak_rss = max(self.peak_rss, proc.memory_info().rss)
            times = proc.cpu_times()
            self._cpu_last = max(self._cpu_last, times.user + times.system)

    @property
    def cpu_s(self) -> float:
        """CPU seconds (user + system) of the process and those it restarted, as of the last sample."""
        return self._cpu_ended + self._cpu_last

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM) without waiting; once per process (its memory and CPU noted first). A stage
        takes a second SIGTERM as "stop at once": it would exit without closing its consumer, and the next
        member of its group (the final drain pass, the next run) would then wait out the dead member's session
        before it gets any partition."""
        if self.proc.poll() is None and self._asked is not self.proc:
            self.note_rss()
            self._asked = self.proc
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 8.0) -> int:
        """SIGTERM (the stages flush, commit and exit), SIGKILL if that takes longer than ``timeout_s``.

        A SIGKILL loses nothing: every stage commits only what is durable downstream, and writes are
        idempotent, so the records it held are read again by the next run."""
        self.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", self.name, timeout_s)
            self.proc.kill()
            self.proc.wait(10)
        return int(self.proc.returncode)


def stop_all(services: list[Service], timeout_s: float = 8.0) -> None:
    """Stop every service at once: SIGTERM to all, then wait (and SIGKILL) each within ``timeout_s``."""
    for s in services:
        s.terminate()
    deadline = time.monotonic() + timeout_s
    for s in services:
        s.stop(max(0.5, deadline - time.monotonic()))


def _child_env(changes: Mapping[str, str | None]) -> dict[str, str]:
    env = {**os.environ, **{k: v for k, v in changes.items() if v is not None}}
    for key in [k for k, v in changes.items() if v is None]:
        env.pop(key, None)
    return env


def group_lag(kafka: KafkaConnection | str, group: str, topics: list[str], timeout_s: float = 30.0) -> int:
    """Messages the group still has to read on ``topics``: high watermark minus committed offset.

    Retriable broker answers (the group coordinator moving or still loading, as right after a broker
    starts) are retried until ``timeout_s``."""
    with LagReader(kafka, group) as reader:
        return reader.lag(topics, timeout_s)


class LagReader:
    """Reads a group's lag (:func:`group_lag`) again and again through one client, for a poll loop."""

    def __init__(self, kafka: KafkaConnection | str, group: str) -> None:
        self._consumer = Consumer(kafka_config(kafka, {"group.id": group, "enable.auto.commit": False}))

    def __enter__(self) -> LagReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._consumer.close()

    def lag(self, topics: list[str], timeout_s: float = 30.0) -> int:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return _lag(self._consumer, topics, timeout_s=10.0)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                retriable = isinstance(err, KafkaError) and (err.retriable() or err.code() in _COORDINATOR_ERRORS)
                if not retriable or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def consumer_groups(admin: AdminClient, timeout_s: float = 30.0) -> list[str]:
    """The ids of every consumer group on the cluster. Right after a broker starts, its group coordinator answers
    COORDINATOR_LOAD_IN_PROGRESS (and lists nothing) while it loads ``__consumer_offsets``, for seconds on a
    broker that holds many groups: that is retried until ``timeout_s``, then raised, so a listing is never
    taken for complete when it is not."""
    deadline = time.monotonic() + timeout_s
    while True:
        listed = admin.list_consumer_groups(request_timeout=10).result()
        errors = [e for e in listed.errors if isinstance(e, KafkaError)]
        if not errors:
            return [g.group_id for g in listed.valid]
        if time.monotonic() > deadline or any(e.code() not in _COORDINATOR_ERRORS for e in errors):
            raise KafkaException(errors[0])
        time.sleep(0.2)


_COORDINATOR_ERRORS = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError._TIMED_OUT,
}


def _lag(consumer: Consumer, topics: list[str], timeout_s: float) -> int:
    md = consumer.list_topics(timeout=timeout_s)
    tps = [TopicPartition(t, p) for t in topics if t in md.topics for p in md.topics[t].partitions]
    committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(tps, timeout=timeout_s)}
    lag = 0
    for tp in tps:
        low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s)
        done = committed.get((tp.topic, tp.partition), -1)
        lag += high - (done if done >= 0 else low)
    return lag


def wait_drained(
    kafka: KafkaConnection | str,
    group: str,
    topics: list[str],
    services: list[Service],
    timeout_s: float,
    *,
    should_stop: Callable[[], BaseException | None] = lambda: None,
    on_lag: Callable[[int], None] = lambda lag: None,
) -> float:
    """Poll until ``group`` has committed everything on ``topics``; returns when (monotonic) it did.

    ``should_stop`` is asked between polls: an exception it returns is raised (a signal, Kafka gone for
    good). ``on_lag`` gets each lag read (progress). A lag read that fails because the broker is away is
    retried: the caller's Kafka watch decides when an outage is final. A service that exits with a retriable
    code is restarted (:meth:`Service.supervise`)."""
    deadline = time.monotonic() + timeout_s
    reader: LagReader | None = None
    try:
        while True:
            for s in services:
                s.supervise()
            stop = should_stop()
            if stop is not None:
                raise stop
            try:
                reader = reader or LagReader(kafka, group)
                lag = reader.lag(topics, timeout_s=10.0)
            except (KafkaException, RuntimeError) as exc:  # RuntimeError: the client could not even be created
                log.debug("lag of %s not readable yet: %s", group, exc)
            else:
                on_lag(lag)
                if lag == 0:
                    return time.monotonic()
            if time.monotonic() > deadline:
                raise StackError(f"consumer group {group} still had lag after {timeout_s:.0f}s")
            time.sleep(_POLL_S)
    finally:
        if reader is not None:
            reader.close()


def run_to_completion(service: Service, timeout_s: float, *,
                      should_stop: Callable[[], BaseException | None] = lambda: None) -> float:
    """Wait until a one-shot ``service`` (a drain) exits 0, restarting it after a retriable exit; returns when
    (monotonic) it finished. Raises what ``should_stop`` returns, or :class:`StackError` past ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        code = service.proc.poll()
        if code == 0:
            return time.monotonic()
        if code is not None:
            service.supervise()
        stop = should_stop()
        if stop is not None:
            service.stop()
            raise stop
        if time.monotonic() > deadline:
            service.stop()
            raise StackError(f"{service.name} had not finished after {timeout_s:.0f}s (log: {service.log_file})")
        service.note_rss()
        with contextlib.suppress(subprocess.TimeoutExpired):
            service.proc.wait(_POLL_S)  # returns as soon as it exits


def _last_error(log_file: Path) -> str:
    """The last ``error: ...`` a child printed (what only a person can fix), its wrapped lines joined."""
    lines = tail(log_file, 60).splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    if not starts:
        return ""
    block: list[str] = []
    for line in lines[starts[-1]:]:
        if block and (not line.strip() or line[:4].isdigit()):  # a blank line or the next log record ends it
            break
        block.append(line.strip())
    return " ".join(block).removeprefix("error: ")


def busy_cpu_s() -> float:
    """The machine's busy CPU seconds since boot, all CPUs (user, nice, system, interrupts, steal)."""
    t = psutil.cpu_times()
    return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))
