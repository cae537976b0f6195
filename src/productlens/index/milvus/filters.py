"""``where`` filters (:func:`productlens.index.base.parse_where`) as Milvus boolean expressions.

Metadata lives in one JSON field, ``meta``; the item id is the primary key
``id``. The semantics match the embedded store's SQL (and the reference in
``tests/test_store.py``): ``None`` means "the field is absent", numbers
compare as numbers (``5 == 5.0``), a string never equals a number, and a range
never matches an absent field.
"""

from __future__ import annotations

import json
from typing import Any

from ..base import Condition

_SYM = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def literal(value: Any) -> str:
    """A Milvus expression literal for a str, int, float or bool."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)  # a double-quoted string with backslash escapes


def _ref(field: str) -> str:
    return "id" if field == "id" else f'meta["{field}"]'


def _is_absent(field: str) -> str:
    return "false" if field == "id" else f'not exists meta["{field}"]'


def _membership(field: str, values: tuple) -> str:
    """``field`` equals one of ``values`` (None = absent); one ``in`` clause per value type."""
    ref = _ref(field)
    groups: dict[str, list] = {}
    for v in values:
        if v is None:
            groups.setdefault("none", [])
        else:
            kind = "bool" if isinstance(v, bool) else "str" if isinstance(v, str) else "num"
            groups.setdefault(kind, []).append(v)
    parts = [f"{ref} in [{', '.join(literal(v) for v in vs)}]" for kind, vs in groups.items() if kind != "none"]
    if "none" in groups:
        parts.append(_is_absent(field))
    return "(" + " or ".join(parts) + ")" if parts else "false"


def where_expr(conds: list[Condition]) -> str:
    """The Milvus expression ANDing ``conds`` ("" for no condition)."""
    clauses = []
    for c in conds:
        if c.op == "eq":
            clauses.append(_is_absent(c.field) if c.value is None else f"{_ref(c.field)} == {literal(c.value)}")
        elif c.op == "in":
            clauses.append(_membership(c.field, c.value))
        else:
            clauses.append(f"{_ref(c.field)} {_SYM[c.op]} {literal(c.value)}")
    return " and ".join(f"({c})" for c in clauses)


__all__ = ["literal", "where_expr"]
