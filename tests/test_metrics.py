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


def test_a_gallery_item_ranked_twice_is_refused() -> None:
    from productlens.types import ProductLensError

    with pytest.raises(ProductLensError, match="row 1 lists gallery index 0 more than once"):
        retrieval_metrics(np.array([[0, 1, -1, -1], [0, 0, 0, 1]]), np.array([5, 6]), np.array([5, 5]))  # AP 3


def test_top5_never_below_top1_with_ties_and_nan_scores_refused() -> None:
    from productlens.eval.classification import classification_metrics
    from productlens.types import ProductLensError

    labels = [f"c{i}" for i in range(8)]
    probs = np.zeros((2, 8))  # all tied: argmax gives class 0, so the lowest classes are the top 5
    m = classification_metrics(probs, np.array([0, 4]), labels)
    assert m["top1"] == 0.5 and m["top5"] == 1.0
    assert classification_metrics(probs, np.array([5, 7]), labels)["top5"] == 0.0
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.integers(0, 3, size=(5, 9)).astype(float)  # many ties
        y = rng.integers(0, 9, size=5)
        m = classification_metrics(p, y, [str(i) for i in range(9)])
        assert m["top5"] >= m["top1"]
    with pytest.raises(ProductLensError, match="1 of 2 rows of scores hold NaN"):
        classification_metrics(np.array([[np.nan, 0.9], [0.1, 0.9]]), np.array([0, 1]), ["a", "b"])


def test_recall_at_10_caps_the_positives_at_10_and_a_distractor_query_matches_nothing() -> None:
    gallery = np.array([0] * 12 + [1] * 8 + [-1])  # 12 photos of product 0: more than 10
    row = np.array([0, 12, 1, 13, 2, 14, 3, 15, 4, 16] + [5, 6, 7, 8, 9, 10, 11, 17, 18, 19, 20])
    m = retrieval_metrics(row[None], gallery, np.array([0]))
    assert m["recall@10"] == pytest.approx(5 / 10)  # 5 of the first 10 are positives; not 5 / 12
    # a query labelled -1 (a distractor's photo) has no positives: the distractor ranked first is no hit
    m = retrieval_metrics(np.array([[20, 0, 1]]), gallery, np.array([-1]))
    assert m["top1"] == 0.0 and m["map@1000"] == 0.0 and m["recall@10"] == 0.0


def test_classification_metrics_per_class_balanced_accuracy_and_macro_f1_by_hand() -> None:
    from productlens.eval.classification import classification_metrics

    y = np.array([0, 0, 0, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])  # predictions 0, 0, 1, 1
    m = classification_metrics(probs, y, ["a", "b"])
    assert m["per_class"] == {"a": pytest.approx(2 / 3), "b": 1.0}  # recall of each class
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)  # not top-1's 3/4
    # F1 of a: precision 2/2, recall 2/3 -> 0.8; of b: precision 1/2, recall 1 -> 2/3; macro: their mean
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2) and m["top1"] == 0.75
