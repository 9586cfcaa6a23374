"""Versioned rows: the mutable records (teams, members, projects, API keys, reports, alert rules).

Each lives in a ``ReplacingMergeTree(version[, is_deleted])`` table. A change
inserts the whole row again with a larger ``version``; a delete inserts it with
``is_deleted = 1``. Reads use ``FINAL``, so the next read on any replica sees
the latest version (and not a deleted one) before any merge.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clickhouse_connect.driver.client import Client

from runstream.storage.writer import insert_row


def next_version(after: int | None = None) -> int:
    """A row version: microseconds now, and always above ``after`` (the row it replaces), so a change
    written right after it, or by a replica whose clock is behind, still wins."""
    return max(time.time_ns() // 1000, (after or 0) + 1)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class VersionedTable:
    """A table of versioned rows: its name, the (String) columns that identify a record, and whether
    it has an ``is_deleted`` column (one without keeps every record, as ``api_keys`` does)."""

    name: str
    key: tuple[str, ...]
    deletable: bool = True

    def latest(self, client: Client, columns: str, *key: str, join: str = "", where: str = "") -> dict[str, Any] | None:
        """The record's latest version as ``columns`` name them, or None when it is missing or deleted.

        ``join`` (SQL after ``FROM table FINAL``) and ``where`` (one more condition) are for a
        record read together with another table; they may use the key's parameters by column name.
        """
        if len(key) != len(self.key):
            raise TypeError(f"{self.name} records are identified by {', '.join(self.key)}")
        conditions = [f"{column} = {{{column}:String}}" for column in self.key] + ([where] if where else [])
        rows = list(
            client.query(
                f"SELECT {columns} FROM {self.name} FINAL {join} WHERE {' AND '.join(conditions)}",
                parameters=dict(zip(self.key, key)),
            ).named_results()
        )
        return rows[0] if rows else None

    def write(
        self, client: Client, row: Mapping[str, Any], after: int | None = None, deleted: bool = False
    ) -> dict[str, Any]:
        """Insert ``row`` (every column but the version and deletion flag) as the version after
        ``after``, the version it replaces (None for a new record); ``deleted`` deletes the record.
        Returns the row as written."""
        values = {**row, "version": next_version(after)}
        if self.deletable:
            values["is_deleted"] = int(deleted)
        elif deleted:
            raise ValueError(f"{self.name} rows cannot be deleted")
        insert_row(client, self.name, values)
        return values
