"""The names and times every layer checks: teams, projects, run ids, users, and the range of a stored time.

Written once here (the SDK needs them, so they live in the light package); the
event contract, storage's account checks and the API's declared types all use these.
"""

from __future__ import annotations

import re
from typing import TypeGuard

# Each pattern comes with the words error messages use to say it. A pattern ends in ``(?![\s\S])``, not ``$``:
# in Python (msgspec checks patterns with ``re.search``) ``$`` also matches before a trailing newline, and the
# lookahead reads the same in the OpenAPI document's ECMAScript dialect.

#: A team or project name (the event contract's, so it is also a Kafka-key and path-safe word).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}(?![\s\S])"
NAME_RULE = "1-128 letters, digits, '_', '.' or '-', starting with a letter or digit"
#: A run id: what the SDK generates, or what a user passes as ``id=``.
RUN_ID_PATTERN = r"^[A-Za-z0-9_\-]{1,64}(?![\s\S])"
RUN_ID_RULE = "1-64 letters, digits, '_' or '-'"
#: A user name (an e-mail address fits).
USER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@+\-]{0,127}(?![\s\S])"
USER_RULE = "1-128 letters, digits or '_.@+-', starting with a letter or digit"

_NAME = re.compile(NAME_PATTERN)
_RUN_ID = re.compile(RUN_ID_PATTERN)
_USER = re.compile(USER_PATTERN)

#: The latest stored time, in Unix milliseconds: the year 2286, inside ClickHouse's DateTime64(3) range.
MAX_TIME_MS = 10**13
#: The same in Unix seconds.
MAX_TIME_S = MAX_TIME_MS // 1000


def is_name(value: object) -> TypeGuard[str]:
    """A team or project name."""
    return isinstance(value, str) and _NAME.match(value) is not None


def is_run_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _RUN_ID.match(value) is not None


def is_user(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _USER.match(value) is not None


def is_time_ms(value: object) -> bool:
    """Unix milliseconds storage can keep (an int, not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TIME_MS


def is_time_s(value: object) -> bool:
    """Unix seconds storage can keep (an int or a float, not a bool; finite)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= MAX_TIME_S
