"""The error the query layer raises for a request it cannot answer as asked."""

from __future__ import annotations

from typing import Any


class QueryError(ValueError):
    """A bad query (unknown key, operator or column, malformed cursor, bad value).

    The API turns it into a 4xx with ``message`` and ``details``; nothing about it
    is an engine failure, and no user input in it has reached SQL.
    """

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


def require_text(what: str, value: Any) -> None:
    """A non-empty string argument (a run id, a key), else a QueryError naming it."""
    if not isinstance(value, str) or not value:
        raise QueryError(f"{what} must be a non-empty string, got {value!r}")
