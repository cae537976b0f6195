"""Which items show which product: a catalog's product -> items map, kept up to date by its own writes."""

from __future__ import annotations

from typing import Sequence

from productlens.index.base import Store
from productlens.types import product_key


class ProductMap:
    """Item ids per product of ``store`` (sets; items without a product, and distractors, are left out), read
    from every item once and then changed item by item (:meth:`update`): it had been read again from every
    item after each write of a server (0.7 s at 200k items)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.items: dict[int, set[int]] = {}
        self._key: dict[int, int] = {}  # item -> its product in ``items``
        self._place(store.ids().tolist())

    def _place(self, ids: Sequence[int]) -> None:
        for i, md in zip(ids, self.store.get(ids)):
            key = product_key(int(i), (md or {}).get("product_id"))
            if md is not None and key >= 0:
                self.items.setdefault(key, set()).add(int(i))
                self._key[int(i)] = key

    def update(self, ids: Sequence[int]) -> None:
        """Items ``ids`` were added, changed or removed: placed as their metadata says now."""
        ids = [int(i) for i in ids]
        for i in ids:
            key = self._key.pop(i, None)
            if key is not None:
                self.items[key].discard(i)
                if not self.items[key]:
                    del self.items[key]
        self._place(ids)
