"""Category classifiers: heads on frozen backbone features, calibrated, hierarchical.

>>> from productlens.models.classifiers import load_classifier
>>> clf = load_classifier("model/")                      # doctest: +SKIP
>>> clf.predict(["a.jpg", "b.jpg"], k=4)                 # doctest: +SKIP
[[('07', 0.62), ('12', 0.21), ...], ...]

Training lives in :mod:`productlens.pipeline.classify`; the head itself in
:mod:`~productlens.models.classifiers.head` (torch, imported when training),
prediction needs only numpy and the backbone.
"""

from productlens.models.classifiers.model import Classifier, Predictions, load_classifier

__all__ = ["Classifier", "Predictions", "load_classifier"]
