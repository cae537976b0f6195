"""Fine-tuning of a bundled backbone's last blocks (needs the ``torch`` extra).

>>> from productlens.models.finetune import finetune_backbone     # doctest: +SKIP
>>> res = finetune_backbone(items, [it.product_id for it in items], "catalog/backbone")  # doctest: +SKIP
>>> emb = create_embedder(res.embedder_name)                       # doctest: +SKIP
"""

from productlens.models.finetune.train import FinetuneConfig, FinetuneResult, finetune_backbone, supports

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune_backbone", "supports"]
