"""``where`` filters (:func:`productlens.index.base.parse_where`) as Qdrant filters.

Each item's payload is ``{"id": <item id>, "meta": {<metadata>}}``, so a field
``f`` is the payload path ``meta.f`` (and ``id`` is ``id``). The semantics match
the embedded store's (and the reference in ``tests/test_store.py``): ``None``
means "the field is absent", numbers compare as numbers (``5 == 5.0``: a numeric
equality is a closed range, since Qdrant's exact match keeps ints and floats
apart), a string never equals a number, a bool only equals a bool, and a range
never matches an absent field. Qdrant has no string ranges: a range with a
string bound is refused. One difference remains: Qdrant matches a field that
holds a list when one of its elements matches (``{"tags": "a"}`` matches
``["a", "b"]``), and takes an empty list for an absent field; the other stores
compare the list as one value.
"""

from __future__ import annotations

from typing import Any

from ...types import ProductLensError
from ..base import Condition


def payload_key(field: str) -> str:
    """The payload path of a metadata field (``id`` is the item id)."""
    return "id" if field == "id" else f"meta.{field}"


def _models():
    from qdrant_client import models

    return models


def _equals(field: str, value: Any):
    m = _models()
    key = payload_key(field)
    if value is None:
        if field == "id":  # every item has an id
            return m.HasIdCondition(has_id=[])
        return m.IsEmptyCondition(is_empty=m.PayloadField(key=key))
    if isinstance(value, (bool, str)) or (isinstance(value, int) and abs(value) > 2 ** 53):
        # a range is taken as floats: above 2**53 it had matched 2**60 for 2**60 + 1
        return m.FieldCondition(key=key, match=m.MatchValue(value=value))
    return m.FieldCondition(key=key, range=m.Range(gte=value, lte=value))


def _range(c: Condition):
    m = _models()
    if isinstance(c.value, str) or isinstance(c.value, bool):
        raise ProductLensError(f"where: the qdrant backend compares only numbers by range; "
                               f"field {c.field!r} got {c.op} {c.value!r}")
    return m.FieldCondition(key=payload_key(c.field), range=m.Range(**{c.op: c.value}))


def where_filter(conds: list[Condition]):
    """The ``qdrant_client.models.Filter`` ANDing ``conds`` (None for no condition)."""
    if not conds:
        return None
    m = _models()
    must = []
    for c in conds:
        if c.op == "eq":
            must.append(_equals(c.field, c.value))
        elif c.op == "in":
            # an empty should-list would match everything in Qdrant: "one of nothing" matches nothing
            must.append(m.Filter(should=[_equals(c.field, v) for v in c.value]) if c.value
                        else m.HasIdCondition(has_id=[]))
        else:
            must.append(_range(c))
    return m.Filter(must=must)


__all__ = ["payload_key", "where_filter"]
