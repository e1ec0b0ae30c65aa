"""Readers of legacy sources: CSV and JSONL files, PostgreSQL tables. Streaming, bounded memory."""

from __future__ import annotations

from producers.readers.base import FileMark, Item, KeyMark, Mark, Reader, Record, Rejected, RejectRule
from producers.readers.csvfile import CsvReader
from producers.readers.jsonl import JsonlReader
from producers.readers.table import TableReader

__all__ = [
    "CsvReader",
    "FileMark",
    "Item",
    "JsonlReader",
    "KeyMark",
    "Mark",
    "Reader",
    "Record",
    "RejectRule",
    "Rejected",
    "TableReader",
]
