"""The ground truth (``truth.jsonl``) and the run summary.

One JSON object per source line of every file, in the order the lines were written (files
interleaved), as specified in ``docs/data-contract.md``. The writer also counts what it wrote, so the
summary needs no second pass over the files.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring
from pathlib import Path
from types import TracebackType
from typing import Final

from pydantic import BaseModel, ConfigDict

from crmflow.demo_data.layout import SOURCE_FILES, SourceFile

_FLUSH_EVERY = 4096


# One formatter per entity, unrolled by hand: a truth line is written millions of times and an f-string
# with C-escaped values costs a third of a generic template (and a fifth of json.dumps). The unit tests
# check every formatter against json.dumps of the same dict, key order included.
_N: Final = "null"
_enc = encode_basestring


def _flags(flags: list[str]) -> str:
    return "[" + ",".join(map(_enc, sorted(flags))) + "]" if flags else "[]"


def _account(line: int, key: str, cluster: str | None, v: Sequence[str | None], flags: list[str]) -> str:
    cid, full, first, last, email, phone, street, city, postal, country, region, birth, since = v
    return (
        f'{{"entity":"account","source_file":"customers.csv","line":{line},"source_key":{_enc(key)},'
        f'"cluster":{_N if cluster is None else _enc(cluster)},"outcome":"ok","rule":null,"clean":{{'
        f'"customer_id":{_N if cid is None else _enc(cid)},"full_name":{_N if full is None else _enc(full)},'
        f'"first_name":{_N if first is None else _enc(first)},"last_name":{_N if last is None else _enc(last)},'
        f'"email":{_N if email is None else _enc(email)},"phone":{_N if phone is None else _enc(phone)},'
        f'"street":{_N if street is None else _enc(street)},"city":{_N if city is None else _enc(city)},'
        f'"postal_code":{_N if postal is None else _enc(postal)},'
        f'"country":{_N if country is None else _enc(country)},"region":{_N if region is None else _enc(region)},'
        f'"birth_date":{_N if birth is None else _enc(birth)},'
        f'"customer_since":{_N if since is None else _enc(since)},"quality_flags":{_flags(flags)}}}}}'
    )


def _account_with_id(line: int, key: str, cluster: str | None, v: Sequence[str | None], flags: list[str]) -> str:
    """An account line of the hard profile: the default keys plus ``national_id`` before ``quality_flags``."""
    text = _account(line, key, cluster, v[:-1], flags)
    at = text.rindex(',"quality_flags":')
    nid = v[-1]
    return f'{text[:at]},"national_id":{_N if nid is None else _enc(nid)}{text[at:]}'


def _contact(line: int, key: str, cluster: str | None, v: Sequence[str | None], flags: list[str]) -> str:
    kid, cid, full, first, last, email, phone, job = v
    return (
        f'{{"entity":"contact","source_file":"contacts.csv","line":{line},"source_key":{_enc(key)},'
        f'"cluster":{_N if cluster is None else _enc(cluster)},"outcome":"ok","rule":null,"clean":{{'
        f'"contact_id":{_N if kid is None else _enc(kid)},"customer_id":{_N if cid is None else _enc(cid)},'
        f'"full_name":{_N if full is None else _enc(full)},"first_name":{_N if first is None else _enc(first)},'
        f'"last_name":{_N if last is None else _enc(last)},"email":{_N if email is None else _enc(email)},'
        f'"phone":{_N if phone is None else _enc(phone)},"job_title":{_N if job is None else _enc(job)},'
        f'"quality_flags":{_flags(flags)}}}}}'
    )


def _sale(line: int, key: str, cluster: str | None, v: Sequence[str | None], flags: list[str]) -> str:
    sid, cid, total, currency, amount, original_currency, day, product = v
    return (
        f'{{"entity":"sale","source_file":"sales.csv","line":{line},"source_key":{_enc(key)},'
        f'"cluster":{_N if cluster is None else _enc(cluster)},"outcome":"ok","rule":null,"clean":{{'
        f'"sale_id":{_N if sid is None else _enc(sid)},"customer_id":{_N if cid is None else _enc(cid)},'
        f'"total_sales":{_N if total is None else _enc(total)},'
        f'"currency":{_N if currency is None else _enc(currency)},'
        f'"original_amount":{_N if amount is None else _enc(amount)},'
        f'"original_currency":{_N if original_currency is None else _enc(original_currency)},'
        f'"sale_date":{_N if day is None else _enc(day)},"product":{_N if product is None else _enc(product)},'
        f'"quality_flags":{_flags(flags)}}}}}'
    )


def _case(line: int, key: str, cluster: str | None, v: Sequence[str | None], flags: list[str]) -> str:
    tid, cid, day, subject, status, priority = v
    return (
        f'{{"entity":"case","source_file":"tickets.csv","line":{line},"source_key":{_enc(key)},'
        f'"cluster":{_N if cluster is None else _enc(cluster)},"outcome":"ok","rule":null,"clean":{{'
        f'"case_id":{_N if tid is None else _enc(tid)},"customer_id":{_N if cid is None else _enc(cid)},'
        f'"case_creation_date":{_N if day is None else _enc(day)},'
        f'"subject":{_N if subject is None else _enc(subject)},"status":{_N if status is None else _enc(status)},'
        f'"priority":{_N if priority is None else _enc(priority)},"quality_flags":{_flags(flags)}}}}}'
    )


OkFormatter = Callable[[int, str, "str | None", Sequence["str | None"], list[str]], str]
OK_FORMATTERS: Final[dict[str, OkFormatter]] = {
    "customers.csv": _account,
    "contacts.csv": _contact,
    "sales.csv": _sale,
    "tickets.csv": _case,
}


def reject_line(source: SourceFile, line: int, key: str, cluster: str | None, rule: str) -> str:
    return (
        f'{{"entity":"{source.entity}","source_file":"{source.name}","line":{line},'
        f'"source_key":{_enc(key)},"cluster":{_N if cluster is None else _enc(cluster)},"outcome":"reject",'
        f'"rule":{_enc(rule)},"clean":{{}}}}'
    )


class FileSummary(BaseModel):
    """Data lines of one CSV file: how many, how many the pipeline keeps, rejects per rule."""

    model_config = ConfigDict(frozen=True)

    lines: int
    ok: int
    rejected: dict[str, int]


class Summary(BaseModel):
    """What a generator run wrote."""

    model_config = ConfigDict(frozen=True)

    seed: int
    files: dict[str, FileSummary]
    persons: int
    clusters_with_duplicates: int
    duplicate_records: int
    deleted_customers: int

    @property
    def rejected_by_rule(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for f in self.files.values():
            total.update(f.rejected)
        return dict(sorted(total.items()))


class TruthWriter:
    """Writes ``truth.jsonl`` (or a part of it) and counts oks and rejects per file and rule."""

    def __init__(self, path: Path, *, national_id: bool = False) -> None:
        """``national_id``: account values end with the hard profile's national id (see :mod:`.hard`)."""
        self._file = path.open("wb")
        self._buf: list[bytes] = []  # encoded per line: cheaper than a text-mode write of the joined lines
        self._ok: dict[str, int] = {s.name: 0 for s in SOURCE_FILES}
        self._rejected: dict[str, Counter[str]] = {s.name: Counter() for s in SOURCE_FILES}
        self._formatters = {s.name: OK_FORMATTERS[s.name] for s in SOURCE_FILES}
        if national_id:
            self._formatters["customers.csv"] = _account_with_id

    def ok(
        self,
        source: SourceFile,
        line: int,
        key: str,
        cluster: str | None,
        values: Sequence[str | None],
        flags: list[str],
    ) -> None:
        """Record a line that becomes a target entity.

        ``values`` are the clean values of ``TARGET_FIELDS[source.entity]`` in that order;
        ``flags`` the quality flags (written sorted).
        """
        self._ok[source.name] += 1
        self._buf.append(self._formatters[source.name](line, key, cluster, values, flags).encode())
        if len(self._buf) >= _FLUSH_EVERY:
            self.flush()

    def reject(self, source: SourceFile, line: int, key: str, cluster: str | None, rule: str) -> None:
        """Record a line that ends in the dead-letter topic under ``rule``."""
        self._rejected[source.name][rule] += 1
        self._buf.append(reject_line(source, line, key, cluster, rule).encode())
        if len(self._buf) >= _FLUSH_EVERY:
            self.flush()

    def counts(self) -> dict[str, Counter[str]]:
        """Per file: ``ok`` and each reject rule, with how many lines had it."""
        return {name: Counter({"ok": self._ok[name], **c}) for name, c in self._rejected.items()}

    def flush(self) -> None:
        if self._buf:
            self._buf.append(b"")
            self._file.write(b"\n".join(self._buf))
            self._buf.clear()

    def close(self) -> None:
        self.flush()
        self._file.close()

    def __enter__(self) -> TruthWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def file_summaries(counts: dict[str, Counter[str]]) -> dict[str, FileSummary]:
    """:class:`FileSummary` per file from the (summed) :meth:`TruthWriter.counts`."""
    out = {}
    for source in SOURCE_FILES:
        c = counts.get(source.name, Counter())
        rejected = {rule: n for rule, n in sorted(c.items()) if rule != "ok"}
        out[source.name] = FileSummary(lines=c["ok"] + sum(rejected.values()), ok=c["ok"], rejected=rejected)
    return out
