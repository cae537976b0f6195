"""What a catalog's vectors are made by: the query and gallery embedders of its view sets, and its vectors' name."""

from __future__ import annotations

from typing import Sequence

from productlens.index.base import Store
from productlens.models.embedders import Embedder


def stored_companions(store: Store) -> list[str]:
    """The companion backbones a catalog's store records (see
    :func:`~productlens.pipeline.catalog_build.build_catalog`)."""
    return [c for c in str(store.get_info("companions", "")).split("+") if c]


def vector_name(embedder: str, companions: Sequence[str] = ()) -> str:
    """What a catalog's vectors are made by: the embedder's name, plus its companions if any."""
    return "+".join([embedder, *companions]) if companions else embedder


def query_embedder(embedder: Embedder, views: str = "none"):
    """What embeds a catalog's queries (and the shopper photos its adapter learns from).

    ``views``: ``"none"`` (the embedder itself) or a view set of
    :func:`productlens.data.augment.view_set` pooled into one descriptor
    (:class:`~productlens.data.augment.PooledViewEmbedder`), e.g. ``"regions"``.
    """
    if views == "none":
        return embedder
    from productlens.data.augment import PooledViewEmbedder, view_groups

    groups = view_groups(views)
    return PooledViewEmbedder(embedder, [v for g in groups for v in g], [len(g) for g in groups])
