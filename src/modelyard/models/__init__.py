"""Built-in LightningModules and the data spec that carries preprocessing into the model.

Any LightningModule can be trained by ``modelyard train`` (``model.class_path`` in the config); if
its ``__init__`` takes a ``data_spec`` argument it receives the fitted :class:`DataSpec`.
The tabular built-ins take batches ``(features (B, F) float32, target (B,) int64)``; the text and
image classifiers take named inputs and return ``logits`` and ``embedding`` (the batch convention
of :mod:`modelyard.models.batch`).
"""

from modelyard.models.spec import DataSpec, FeatureSpec, encode_features, encode_labels, fit_data_spec
from modelyard.models.tabular import TabularMLP
from modelyard.models.text import TextClassifier
from modelyard.models.vision import ImageClassifier, SmallCNN

__all__ = ["DataSpec", "FeatureSpec", "ImageClassifier", "SmallCNN", "TabularMLP", "TextClassifier",
           "encode_features", "encode_labels", "fit_data_spec"]
