"""Physical lines of a binary file, with bounded memory, shared by the CSV and JSONL readers.

Files are read in binary and decoded per record by the readers, so one line of bad bytes rejects that
line only, and byte offsets (the resume marks) stay exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

DEFAULT_MAX_LINE_BYTES = 256 * 1024
READ_BUFFER_BYTES = 1024 * 1024


def physical_lines(fh: BinaryIO, max_bytes: int) -> Iterator[tuple[bytes, int, bool]]:
    """Yield ``(data, consumed, overflow)`` per physical line (ending in ``\\n`` or at end of file).

    ``consumed`` is the number of bytes the line occupies in the file. A line longer than ``max_bytes``
    is consumed whole but only its first ``max_bytes`` are kept, with ``overflow`` True, so a file with
    no newlines cannot exhaust memory.
    """
    readline = fh.readline
    while True:
        data = readline(max_bytes)
        if not data:
            return
        if len(data) < max_bytes or data.endswith(b"\n"):
            yield data, len(data), False
            continue
        consumed = len(data)
        while True:
            more = readline(max_bytes)
            consumed += len(more)
            if not more or more.endswith(b"\n"):
                break
        yield data, consumed, True


def strip_eol(data: bytes) -> bytes:
    """``data`` without one trailing ``\\n`` or ``\\r\\n``."""
    if data.endswith(b"\r\n"):
        return data[:-2]
    if data.endswith(b"\n"):
        return data[:-1]
    return data


def utf8_error(exc: UnicodeDecodeError) -> str:
    """A PII-free description of a decoding failure: where, not what."""
    name = "UTF-8" if exc.encoding.replace("_", "-").lower() in ("utf-8", "utf8") else exc.encoding
    return f"bytes at offset {exc.start} of the record are not valid {name} ({exc.reason})"
