"""mAP@1000 (AIcrowd definition), top-k and recall@10 on hand-computed cases."""

import numpy as np
import pytest

from productlens.eval.metrics import average_precision_at_k, retrieval_metrics


def test_map_matches_hand_computation() -> None:
    gallery = np.array([0, 0, 1, 2, -1])        # two photos of product 0, a distractor
    rankings = np.array([[4, 0, 2, 1, 3],       # query of product 0: hits at ranks 2 and 4
                         [2, 0, 1, 3, 4]])      # query of product 1: hit at rank 1
    m = retrieval_metrics(rankings, gallery, np.array([0, 1]))
    ap0 = (1 / 2 + 2 / 4) / 2
    assert m["map@1000"] == pytest.approx((ap0 + 1.0) / 2)
    assert m["top1"] == 0.5 and m["top5"] == 1.0
    assert m["recall@10"] == 1.0


def test_ap_divides_by_min_positives_and_k() -> None:
    rel = np.array([[True, False, True]])
    assert average_precision_at_k(rel, np.array([5]), k=3)[0] == pytest.approx((1 + 2 / 3) / 3)
    assert average_precision_at_k(rel, np.array([2]), k=3)[0] == pytest.approx((1 + 2 / 3) / 2)


def test_padding_and_unknown_queries_score_zero() -> None:
    m = retrieval_metrics(np.array([[0, -1], [-1, -1]]), np.array([3]), np.array([3, 7]))
    assert m["map@1000"] == 0.5 and m["top1"] == 0.5
