"""Paging of the JSON API's lists: ``?limit=`` (default ``DEFAULT_LIMIT``, at most ``MAX_LIMIT``)
items of each list of a view per page, in a stable order (each list's own sort key), and an opaque
cursor ``next`` to the following page (null after the last). The cursor holds, for each list not
yet exhausted, the sort key of the last item given: a later page starts after it, so items added
or removed between pages shift nothing else (keyset paging, as Alertmanager's and Kubernetes'
continue tokens do)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping

import orjson

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_BAD_CURSOR = "cursor is not one this endpoint gave: pass the 'next' of the previous page unchanged"


class PageError(ValueError):
    """A bad ``limit`` or ``cursor``: the message says which and what is allowed."""


def page(query: Mapping[str, str], lists: dict[str, tuple[list, Callable[[object], list]]]) -> dict:
    """One page of each of ``lists`` (name -> (items, sort key of an item: a JSON list)), and
    ``next``: the cursor to the following page, or None."""
    limit = _limit(query.get("limit"))
    cursor = query.get("cursor")
    after = {} if cursor is None else _decode(cursor, lists)
    body: dict = {}
    following: dict[str, list] = {}
    for name, (items, key) in lists.items():
        if cursor is not None and name not in after:  # exhausted on an earlier page
            body[name] = []
            continue
        start = after.get(name)
        keyed = sorted(((key(item), item) for item in items), key=lambda pair: pair[0])
        try:
            rest = [(k, item) for k, item in keyed if start is None or k > start]
        except TypeError:  # a cursor of another shape than this list's keys
            raise PageError(_BAD_CURSOR) from None
        body[name] = [item for _, item in rest[:limit]]
        if len(rest) > limit:
            following[name] = rest[limit - 1][0]
    body["next"] = _encode(following) if following else None
    return body


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise PageError(f"limit must be a whole number from 1 to {MAX_LIMIT} (got {raw[:40]!r})")
    return limit


def _encode(following: dict[str, list]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(following)).decode().rstrip("=")


def _decode(cursor: str, lists: dict) -> dict[str, list]:
    try:
        after = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        after = None
    if not isinstance(after, dict) or not set(after) <= set(lists) or \
            not all(isinstance(k, list) for k in after.values()):
        raise PageError(_BAD_CURSOR)
    return after
