"""How a CSV file is written: delimiter, quote character and encoding, declared or detected.

A source declares what it knows (``delimiter``, ``quotechar``, ``encoding``, ``dialect``) and
:func:`resolve_dialect` detects the rest from the head of the file, once, when the reader opens:

- **encoding**: a UTF-8 byte-order mark is always skipped. A declared encoding is used strictly (a line
  that does not decode is dead-lettered as ``encoding``). Undeclared, the first
  :data:`SNIFF_ENCODING_BYTES` are scanned line by line (:func:`sniff_encoding`): lines that are valid
  UTF-8 with non-ASCII characters vote for UTF-8, lines that are not valid UTF-8 but read as 8-bit text
  for the fallback (cp1252, what Windows exports write). UTF-8 wins ties, an all-ASCII head and a head
  where under 1% of the lines vote 8-bit, so a UTF-8 export with a few damaged lines stays strict UTF-8
  (those lines are dead-lettered as ``encoding``; declare ``encoding`` when the guess is wrong). When
  cp1252 wins, each line is still tried as UTF-8 first (cp1252 text is almost never valid non-ASCII
  UTF-8), so a file whose head was misjudged is not turned into mojibake. A UTF-16/32 byte-order mark
  is a clear error: the reader needs an ASCII-compatible encoding to find lines, quotes and delimiters
  in the bytes.
- **delimiter and quote** (``dialect: auto``): :class:`csv.Sniffer` on the first
  :data:`SNIFF_DIALECT_BYTES` (whole lines), restricted to ``, ; TAB |`` and to quotes ``"`` and ``'``;
  a guess that does not split the header is replaced by the candidate the header contains most often.
  ``dialect: excel`` is comma and ``"``, ``excel-tab`` is TAB and ``"``, without sniffing.

The resolved dialect is stored in the snapshot's checkpoint, so a resumed run parses the rest of the
file exactly like the first part.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

from producers.exceptions import SourceOpenError

DialectName = Literal["auto", "excel", "excel-tab"]
DIALECTS: tuple[DialectName, ...] = ("auto", "excel", "excel-tab")
DELIMITERS = ",;\t|"
QUOTES = "\"'"
FALLBACK_ENCODING = "cp1252"
SNIFF_DIALECT_BYTES = 64 * 1024
SNIFF_ENCODING_BYTES = 1024 * 1024
UTF8_BOM = codecs.BOM_UTF8
_WIDE_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


@dataclass(frozen=True, slots=True)
class CsvDialect:
    """A resolved dialect: single-character ``delimiter`` and ``quotechar``, a Python codec name, and the
    codec a line that is not valid in ``encoding`` is decoded with instead (None: such a line is rejected)."""

    delimiter: str = ","
    quotechar: str = '"'
    encoding: str = "utf-8"
    fallback: str | None = None

    def to_json(self) -> dict[str, str]:
        out = {"delimiter": self.delimiter, "quotechar": self.quotechar, "encoding": self.encoding}
        if self.fallback:
            out["fallback"] = self.fallback
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CsvDialect:
        fallback = data.get("fallback")
        out = cls(str(data["delimiter"]), str(data["quotechar"]), str(data["encoding"]),
                  str(fallback) if fallback else None)  # fmt: skip
        check_delimiter(out.delimiter, "delimiter")
        check_delimiter(out.quotechar, "quotechar")
        check_encoding(out.encoding)
        if out.fallback:
            check_encoding(out.fallback)
        return out

    def decode(self, data: bytes) -> str:
        """``data`` as text; UnicodeDecodeError (of ``encoding``) when neither codec decodes it."""
        try:
            return data.decode(self.encoding)
        except UnicodeDecodeError:
            if self.fallback is None:
                raise
            try:
                return data.decode(self.fallback)
            except UnicodeDecodeError:
                pass
            raise

    def describe(self) -> str:
        shown = {"\t": "TAB"}.get(self.delimiter, self.delimiter)
        enc = f"{self.encoding} (else {self.fallback})" if self.fallback else self.encoding
        return f"delimiter {shown!r}, quote {self.quotechar!r}, encoding {enc}"


def check_delimiter(value: str, what: str) -> str:
    """``value`` if it is one ASCII character that can separate or quote fields; ValueError otherwise."""
    if len(value) != 1 or not value.isascii() or value in "\r\n" or value.isalnum():
        raise ValueError(f"{what}: expected one ASCII punctuation or TAB character, got {value!r}")
    return value


def check_encoding(name: str) -> str:
    """The codec's canonical name if Python knows it and it is ASCII-compatible; ValueError otherwise."""
    try:
        info = codecs.lookup(name)
    except LookupError:
        raise ValueError(f"encoding: unknown encoding {name!r} (e.g. utf-8, cp1252, latin-1)") from None
    if info.name == "utf-8-sig":  # the byte-order mark is skipped anyway
        return "utf-8"
    probe = "\n\r,;\t|\"'azAZ09"
    try:
        ascii_ok = probe.encode(info.name) == probe.encode("ascii")
    except UnicodeError:
        ascii_ok = False
    if not ascii_ok:
        raise ValueError(f"encoding: {name!r} is not ASCII-compatible (UTF-16/32 files: re-export as UTF-8)")
    return info.name


def resolve_dialect(
    fh: BinaryIO,
    name: str,
    *,
    delimiter: str | None = None,
    quotechar: str | None = None,
    encoding: str | None = None,
    dialect: DialectName = "auto",
) -> CsvDialect:
    """The dialect of the file open at ``fh`` (read from its start; the position is restored)."""
    at = fh.tell()
    try:
        fh.seek(0)
        head = fh.read(SNIFF_ENCODING_BYTES)
    finally:
        fh.seek(at)
    if any(head.startswith(bom) for bom in _WIDE_BOMS):
        raise SourceOpenError(f"{name}: starts with a UTF-16/32 byte-order mark; re-export the file as UTF-8 "
                              "(or cp1252) text")  # fmt: skip
    body = head[len(UTF8_BOM) :] if head.startswith(UTF8_BOM) else head
    fallback: str | None = None
    if encoding:
        enc = check_encoding(encoding)
    else:
        enc = sniff_encoding(body, complete=len(head) < SNIFF_ENCODING_BYTES)
        if enc != "utf-8":
            enc, fallback = "utf-8", enc
    if dialect == "excel-tab":
        default_delim: str | None = "\t"
    elif dialect == "excel":
        default_delim = ","
    else:
        default_delim = None
    delim = delimiter or default_delim
    quote = quotechar or ('"' if dialect != "auto" else None)
    if delim is None or quote is None:
        sniffed_delim, sniffed_quote = sniff_delimiter(_text_sample(body, fallback or enc))
        delim = delim or sniffed_delim
        quote = quote or sniffed_quote
    return CsvDialect(delim, quote, enc, fallback)


def sniff_encoding(data: bytes, *, complete: bool = False) -> str:
    """``utf-8`` or :data:`FALLBACK_ENCODING`, by the vote of the non-ASCII lines of ``data``.

    A line votes for UTF-8 when it is valid non-ASCII UTF-8, and for the 8-bit encoding when it is not
    UTF-8 but reads as 8-bit text: it decodes, and has no ``0xFF`` byte (``ÿ``, next to never written, but
    the typical stray byte of a damaged UTF-8 file). The 8-bit encoding wins only with more votes than
    UTF-8 and on at least 1% of the lines, so a UTF-8 export with a few damaged lines stays UTF-8 and
    those lines are dead-lettered. ``complete`` says ``data`` is the whole file; otherwise its last,
    possibly cut, line is ignored.
    """
    lines = data.split(b"\n")
    if not complete and len(lines) > 1:
        lines = lines[:-1]
    utf8 = other = total = 0
    for line in lines:
        if not line.strip():
            continue
        total += 1
        if line.isascii():
            continue
        try:
            line.decode("utf-8")
            utf8 += 1
        except UnicodeDecodeError:
            other += _reads_as_8bit_text(line)
    return FALLBACK_ENCODING if other > utf8 and other * 100 >= total else "utf-8"


def _reads_as_8bit_text(line: bytes) -> bool:
    if b"\xff" in line:
        return False
    try:
        line.decode(FALLBACK_ENCODING)
    except UnicodeDecodeError:
        return False
    return True


def _text_sample(body: bytes, encoding: str) -> str:
    sample = body[:SNIFF_DIALECT_BYTES]
    if len(body) > SNIFF_DIALECT_BYTES:
        cut = sample.rfind(b"\n")
        if cut > 0:
            sample = sample[:cut]
    return sample.decode(encoding, errors="replace")


def sniff_delimiter(text: str) -> tuple[str, str]:
    """``(delimiter, quotechar)`` of a text sample; comma and ``"`` when nothing better is found."""
    lines = text.splitlines()
    header = lines[0] if lines else ""
    delim, quote = ",", '"'
    try:
        found = csv.Sniffer().sniff(text, delimiters=DELIMITERS)
        delim = found.delimiter
        found_quote = found.quotechar or ""
        quote = found_quote if len(found_quote) == 1 and found_quote in QUOTES else '"'
    except csv.Error:
        delim = ""
    if len(delim) != 1 or delim not in DELIMITERS or (delim not in header and any(c in header for c in DELIMITERS)):
        counts = {c: header.count(c) for c in DELIMITERS}
        best = max(counts, key=lambda c: counts[c])
        delim = best if counts[best] else ","
    return delim, quote
