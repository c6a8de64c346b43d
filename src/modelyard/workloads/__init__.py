"""Built-in workloads beyond the fraud table, generated offline and deterministic by seed.

Each is a ``LightningDataModule`` in the batch convention (:mod:`modelyard.models.batch`) with
drift knobs, a ``dataset_digest()`` (the dataset's identity in lineage) and, where the model needs
files beside its weights, ``artifacts()``: ``text`` (topic texts, a word-level tokenizer fitted on them) and
``images`` (RGB shapes on noisy backgrounds, UINT8 pixels). Train them with
``modelyard.models.TextClassifier`` and ``modelyard.models.ImageClassifier``.
"""

from modelyard.workloads.images import ImageDrift, ImagesDataModule, make_images
from modelyard.workloads.text import TextDataModule, TextDrift, make_texts

__all__ = ["ImageDrift", "ImagesDataModule", "TextDataModule", "TextDrift", "make_images", "make_texts"]
