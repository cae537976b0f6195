"""``where`` filters (:func:`productlens.index.base.parse_where`) as Milvus boolean expressions.

Metadata lives in one JSON field, ``meta``; the item id is the primary key
``id``. The semantics match the embedded store's SQL (and the reference in
``tests/test_store.py``): ``None`` means "the field is absent", numbers
compare as numbers (``5 == 5.0``), a string never equals a number, and a range
never matches an absent field.
"""

from __future__ import annotations

import json
import math
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


NOTHING = "id < 0"  # matches no item (Milvus takes no bare ``false`` for an expression; ids are >= 0)


def _ref(field: str) -> str:
    return "id" if field == "id" else f'meta["{field}"]'


def _is_absent(field: str) -> str:
    return NOTHING if field == "id" else f'not exists meta["{field}"]'


def _id_value(value: Any) -> int | None:
    """A value compared with the int64 id, as an int; None where no id can equal it (a str, a bool, 4.5)."""
    if isinstance(value, bool) or isinstance(value, str):
        return None
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    return value


def _equals(field: str, value: Any) -> str:
    if value is None:
        return _is_absent(field)
    if field == "id":
        v = _id_value(value)
        return NOTHING if v is None else f"id == {v}"
    return f"{_ref(field)} == {literal(value)}"


def _range(field: str, op: str, value: Any) -> str:
    if isinstance(value, bool):  # a bool has no order with anything
        return NOTHING
    if field == "id":  # the parser takes no float for an int64 field: the same bound as an int
        if isinstance(value, str):
            return NOTHING
        if isinstance(value, float) and not value.is_integer():
            value = math.floor(value) if op in ("gt", "lte") else math.ceil(value)
        value = int(value)
    return f"{_ref(field)} {_SYM[op]} {literal(value)}"


def _membership(field: str, values: tuple) -> str:
    """``field`` equals one of ``values`` (None = absent); one ``in`` clause per value type."""
    if field == "id":
        ids = [_id_value(v) for v in values if v is not None]
        ids = [v for v in ids if v is not None]
        return f"id in [{', '.join(map(str, ids))}]" if ids else NOTHING
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
    return "(" + " or ".join(parts) + ")" if parts else NOTHING


def where_expr(conds: list[Condition]) -> str:
    """The Milvus expression ANDing ``conds`` ("" for no condition)."""
    clauses = []
    for c in conds:
        if c.op == "eq":
            clauses.append(_equals(c.field, c.value))
        elif c.op == "in":
            clauses.append(_membership(c.field, c.value))
        else:
            clauses.append(_range(c.field, c.op, c.value))
    return " and ".join(f"({c})" for c in clauses)


__all__ = ["literal", "where_expr"]
