"""Keyset paging of the JSON API's lists."""

import pytest

from slostream.io.paging import DEFAULT_LIMIT, MAX_LIMIT, PageError, page


def _names(n):
    return [f"n{i:04}" for i in range(n)]


def _all(lists, limit):
    got = {name: [] for name in lists}
    cursor = None
    pages = 0
    while True:
        query = {"limit": str(limit)} | ({"cursor": cursor} if cursor else {})
        body = page(query, lists)
        for name in lists:
            got[name] += body[name]
        pages += 1
        cursor = body["next"]
        if cursor is None:
            return got, pages


def test_pages_give_every_item_once_in_order_over_lists_of_different_lengths():
    lists = {"long": (list(reversed(_names(25))), lambda n: [n]), "short": (_names(3), lambda n: [n])}
    got, pages = _all(lists, 10)
    assert got == {"long": _names(25), "short": _names(3)}
    assert pages == 3


def test_an_item_added_before_the_cursor_shifts_nothing_after_it():
    items = _names(30)
    first = page({"limit": "10"}, {"xs": (items, lambda n: [n])})
    items.insert(0, "a-new-first")
    second = page({"limit": "10", "cursor": first["next"]}, {"xs": (items, lambda n: [n])})
    assert second["xs"] == _names(30)[10:20]


def test_the_default_limit_and_refused_limits_and_cursors():
    assert len(page({}, {"xs": (_names(DEFAULT_LIMIT + 1), lambda n: [n])})["xs"]) == DEFAULT_LIMIT
    for limit in ("0", str(MAX_LIMIT + 1), "ten"):
        with pytest.raises(PageError, match="limit"):
            page({"limit": limit}, {"xs": ([], lambda n: [n])})
    letters = {"xs": (["a"], lambda n: [n])}
    with pytest.raises(PageError, match="cursor"):
        page({"cursor": "forged"}, letters)  # not base64 JSON
    of_numbers = page({"limit": "1"}, {"xs": ([[1.0], [2.0]], lambda x: x)})["next"]
    with pytest.raises(PageError, match="cursor"):
        page({"cursor": of_numbers}, letters)  # keys of another shape
