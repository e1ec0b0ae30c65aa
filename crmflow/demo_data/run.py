"""Run the generator: plan the chunks, generate them, assemble the files, summarise.

With one worker the chunks are written straight into the output files. With more, each worker
process writes a chunk into part files (its id and line offsets are known from the plan) and this
process appends the parts in chunk order as they complete; the bytes are the same either way.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import BinaryIO, Final

from crmflow.demo_data import hard, noise
from crmflow.demo_data.exceptions import DemoDataError
from crmflow.demo_data.generator import ChunkGenerator, ChunkStats, Sinks
from crmflow.demo_data.layout import CONTACTS, CUSTOMERS, SALES, SOURCE_FILES, TICKETS, TRUTH_FILE
from crmflow.demo_data.plan import CHUNK_SIZE, Chunk, plan_chunks
from crmflow.demo_data.pools import build_pools
from crmflow.demo_data.rates import QualityRates
from crmflow.demo_data.truth import Summary, TruthWriter, file_summaries
from crmflow.demo_data.writer import CsvSink

log = logging.getLogger(__name__)

#: The demo config's rate table: units of USD per unit of currency.
DEMO_FX_RATES: Final[Mapping[str, Decimal]] = {
    "USD": Decimal("1"),
    "EUR": Decimal("1.08"),
    "GBP": Decimal("1.27"),
    "CAD": Decimal("0.73"),
}
_COPY_BUFFER: Final = 4 << 20


def _append(part: Path, out: BinaryIO) -> None:
    """Append ``part`` to ``out``, in the kernel where it can (the parent must not compete for CPU)."""
    out.flush()
    with part.open("rb") as src:
        if hasattr(os, "copy_file_range"):
            left = os.fstat(src.fileno()).st_size
            try:
                while left > 0:
                    copied = os.copy_file_range(src.fileno(), out.fileno(), min(left, 1 << 30))
                    if copied == 0:
                        break
                    left -= copied
                if left == 0:
                    return
            except OSError:  # e.g. EXDEV on old kernels: copy what is left in user space
                pass
        shutil.copyfileobj(src, out, _COPY_BUFFER)


@dataclass(frozen=True, slots=True)
class _Settings:
    seed: int
    rates: QualityRates
    window: int
    fx_rates: Mapping[str, Decimal]
    noise: hard.NoiseProfile = "default"

    def generator(self, sinks: Sinks, chunk: Chunk) -> ChunkGenerator:
        return ChunkGenerator(sinks, self.seed, chunk, self.rates, self.window, self.fx_rates, self.noise)


@dataclass(frozen=True, slots=True)
class _Job:
    """Everything a worker process needs for one chunk (pickled to it)."""

    directory: Path
    chunk: Chunk
    settings: _Settings


@dataclass(slots=True)
class _Totals:
    counts: dict[str, Counter[str]]
    stats: ChunkStats

    def add(self, counts: dict[str, Counter[str]], stats: ChunkStats) -> None:
        for name, c in counts.items():
            self.counts.setdefault(name, Counter()).update(c)
        self.stats.persons += stats.persons
        self.stats.duplicate_records += stats.duplicate_records
        self.stats.clusters_with_duplicates += stats.clusters_with_duplicates
        self.stats.deleted_customers += stats.deleted_customers


def _open_sinks(directory: Path, chunk: Chunk | None, profile: hard.NoiseProfile = "default") -> Sinks:
    """Whole files with headers (``chunk`` None), or headerless parts starting at the chunk's lines."""
    o = chunk.offsets if chunk else None

    def sink(source_name: str, before: int) -> CsvSink:
        source = next(s for s in SOURCE_FILES if s.name == source_name)
        if profile == "hard" and source is CUSTOMERS:
            source = hard.HARD_CUSTOMERS
        return CsvSink(directory / source.name, source, header=o is None, line=1 + before)

    return Sinks(
        customers=sink(CUSTOMERS.name, o.records if o else 0),
        contacts=sink(CONTACTS.name, o.contacts if o else 0),
        sales=sink(SALES.name, o.sales if o else 0),
        tickets=sink(TICKETS.name, o.tickets if o else 0),
        truth=TruthWriter(directory / TRUTH_FILE, national_id=profile == "hard"),
    )


def _generate_part(job: _Job) -> tuple[dict[str, Counter[str]], ChunkStats]:
    """Worker process: write one chunk as part files into ``job.directory``."""
    sinks = _open_sinks(job.directory, job.chunk, job.settings.noise)
    try:
        stats = job.settings.generator(sinks, job.chunk).run()
    finally:
        sinks.close()
    return sinks.truth.counts(), stats


def _check_lines(sinks: Sinks, chunk: Chunk) -> None:
    o = chunk.offsets
    expected = (o.records, o.contacts, o.sales, o.tickets)
    actual = (sinks.customers.line, sinks.contacts.line, sinks.sales.line, sinks.tickets.line)
    if tuple(a - 1 for a in actual) != expected:
        raise DemoDataError(f"chunk {chunk.index} starts at lines {actual}, its plan says {expected}")


def _sequential(
    out_dir: Path, chunks: list[Chunk], settings: _Settings, on_progress: Callable[[int], None] | None
) -> _Totals:
    totals = _Totals({}, ChunkStats())
    sinks = _open_sinks(out_dir, None, settings.noise)
    try:
        for chunk in chunks:
            _check_lines(sinks, chunk)
            totals.add({}, settings.generator(sinks, chunk).run())
            if on_progress is not None:
                on_progress(chunk.offsets.records + chunk.slots)
    finally:
        sinks.close()
    totals.counts = sinks.truth.counts()
    return totals


def _parallel(
    out_dir: Path,
    chunks: list[Chunk],
    settings: _Settings,
    workers: int,
    on_progress: Callable[[int], None] | None,
) -> _Totals:
    totals = _Totals({}, ChunkStats())
    names = [s.name for s in SOURCE_FILES] + [TRUTH_FILE]
    parts_root = Path(tempfile.mkdtemp(prefix=".demo-data-parts-", dir=out_dir))
    jobs = []
    for chunk in chunks:
        (parts_root / f"{chunk.index:06d}").mkdir()
        jobs.append(_Job(parts_root / f"{chunk.index:06d}", chunk, settings))
    # fork shares the pools built above; elsewhere each worker builds them (cached per process).
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    outputs = {name: (out_dir / name).open("wb") for name in names}
    try:
        for source in SOURCE_FILES:
            if settings.noise == "hard" and source is CUSTOMERS:
                source = hard.HARD_CUSTOMERS
            outputs[source.name].write((",".join(source.columns) + "\n").encode())
        with multiprocessing.get_context(method).Pool(workers) as pool:
            for chunk_job, (counts, stats) in zip(jobs, pool.imap(_generate_part, jobs), strict=True):
                for name in names:
                    _append(chunk_job.directory / name, outputs[name])
                shutil.rmtree(chunk_job.directory)
                totals.add(counts, stats)
                if on_progress is not None:
                    on_progress(chunk_job.chunk.offsets.records + chunk_job.chunk.slots)
    finally:
        for f in outputs.values():
            f.close()
        shutil.rmtree(parts_root, ignore_errors=True)
    return totals


def generate(
    out_dir: Path,
    customers: int,
    seed: int,
    rates: QualityRates | None = None,
    *,
    workers: int | None = None,
    window: int = 5000,
    fx_rates: Mapping[str, Decimal] = DEMO_FX_RATES,
    chunk_size: int = CHUNK_SIZE,
    on_progress: Callable[[int], None] | None = None,
    noise_profile: hard.NoiseProfile = "default",
) -> Summary:
    """Write the four legacy CSV files and ``truth.jsonl`` for ``customers`` customer records.

    The same ``seed``, rates and ``chunk_size`` give the same bytes, whatever ``workers`` is (default:
    one process per CPU, at most one per chunk). ``window`` bounds how many recent persons a duplicate
    may be drawn from; ``on_progress`` gets the number of customer records written so far.
    ``noise_profile``: ``default``, or ``hard`` (see :mod:`crmflow.demo_data.hard`: duplicates mostly without
    e-mail or phone, harder name and birth-date variations, a ``National_ID`` column, duplicate contacts).
    """
    if customers < 0:
        raise DemoDataError(f"customers must be >= 0, got {customers}")
    rates = rates or QualityRates()
    out_dir.mkdir(parents=True, exist_ok=True)
    build_pools(seed)  # before any fork, so workers share them
    noise.date_texts()
    noise.amount_table()
    chunks = plan_chunks(seed, customers, rates, chunk_size)
    n_workers = min(workers or os.cpu_count() or 1, max(1, len(chunks)))
    if noise_profile not in hard.NOISE_PROFILES:
        raise DemoDataError(f"noise profile must be one of {', '.join(hard.NOISE_PROFILES)}, got {noise_profile!r}")
    settings = _Settings(seed, rates, window, fx_rates, noise_profile)
    log.info(
        "generating demo data: %d customers in %d chunks on %d worker(s)",
        customers,
        len(chunks),
        n_workers,
        extra={"stage": "demo-data"},
    )
    if n_workers > 1:
        totals = _parallel(out_dir, chunks, settings, n_workers, on_progress)
    else:
        totals = _sequential(out_dir, chunks, settings, on_progress)
    return Summary(
        seed=seed,
        files=file_summaries(totals.counts),
        persons=totals.stats.persons,
        clusters_with_duplicates=totals.stats.clusters_with_duplicates,
        duplicate_records=totals.stats.duplicate_records,
        deleted_customers=totals.stats.deleted_customers,
    )
