"""The built-in ``text`` workload: short news-like texts of four topics, generated offline.

:func:`make_texts` writes texts of a made-up newswire whose label is the topic. Each word is a word
of the text's own topic with probability ``0.3``, of another topic with ``0.08`` and a common word
otherwise, so a few words decide the class and a model must look at the whole text. Drift knobs
shift what serving sees: the topic mix, unseen vocabulary (words the tokenizer never saw in
training) and longer texts.

:class:`TextDataModule` generates the texts (deterministic by seed), splits them, fits a
word-level tokenizer on the training split with Hugging Face ``tokenizers``, and yields batches in the batch
convention: ``({"input_ids": (B, T) int64, "attention_mask": (B, T) int64}, target (B,))``, padded
to the longest text of the batch, so ``T`` varies from batch to batch. The tokenizer file is one of
the datamodule's :meth:`~TextDataModule.artifacts`: it travels with the model version, and serving
tokenises raw text with the very tokenizer training used.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, DistributedSampler

from modelyard.workloads._splits import generated_rows, served_rows, split_indices

__all__ = ["TOPICS", "TextDataModule", "TextDrift", "encode_texts", "load_tokenizer", "make_texts", "train_tokenizer"]

TOPICS: dict[str, tuple[str, ...]] = {
    "sport": ("match", "goal", "striker", "coach", "league", "season", "penalty", "keeper", "final", "cup",
              "referee", "stadium", "fans", "tackle", "midfield", "transfer", "derby", "score", "team", "title",
              "injury", "pitch", "captain", "victory", "defeat", "draw", "sprint", "medal", "race", "record"),
    "markets": ("shares", "stocks", "bond", "yield", "investors", "earnings", "profit", "dividend", "index",
                "rally", "slump", "trader", "futures", "currency", "inflation", "rates", "bank", "merger",
                "quarter", "revenue", "forecast", "equity", "hedge", "portfolio", "crude", "gold", "debt",
                "credit", "broker", "valuation"),
    "science": ("researchers", "study", "cells", "protein", "genome", "telescope", "galaxy", "planet", "orbit",
                "laboratory", "experiment", "molecule", "quantum", "particle", "climate", "species", "fossil",
                "enzyme", "neuron", "vaccine", "physics", "chemistry", "theory", "data", "sample", "microscope",
                "reactor", "mission", "spacecraft", "discovery"),
    "weather": ("rain", "storm", "wind", "snow", "forecasters", "temperatures", "frost", "heatwave", "flood",
                "showers", "clouds", "sunshine", "gusts", "thunder", "hail", "drought", "humidity", "fog",
                "cyclone", "warning", "coast", "degrees", "overnight", "breeze", "ice", "mild", "chilly",
                "downpour", "sleet", "pressure"),
}
_COMMON = ("the", "a", "of", "to", "in", "and", "on", "for", "with", "after", "before", "said", "says", "was",
           "is", "were", "will", "new", "first", "last", "year", "week", "today", "on", "by", "at", "from", "as",
           "that", "this", "it", "its", "their", "more", "less", "than", "over", "under", "about", "could", "would",
           "early", "late", "big", "small", "report", "news", "city", "country", "local", "national", "officials",
           "people", "many", "few", "again", "still", "also", "while", "during", "near", "amid", "despite", "one",
           "two", "three", "monday", "tuesday", "friday", "sunday", "morning", "evening", "expected", "likely")
_SYLLABLES = ("zor", "blat", "quin", "vex", "mur", "tal", "pry", "dok", "sen", "wub", "fla", "grim", "yot", "kel")
_P_OWN, _P_OTHER = 0.30, 0.08
PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"


@dataclass(frozen=True)
class TextDrift:
    """How serving traffic differs from training.

    Attributes:
        topic_weights: relative frequency of each topic (missing topics weigh 1); ``{}`` = uniform.
        new_vocabulary: fraction of words replaced by words training never saw (0 = none).
        length_scale: texts are this many times as long (1 = as in training).
    """

    topic_weights: Mapping[str, float] = field(default_factory=dict)
    new_vocabulary: float = 0.0
    length_scale: float = 1.0

    def __post_init__(self) -> None:
        problems = [f"topic_weights has unknown topic {t!r}; topics: {sorted(TOPICS)}"
                    for t in self.topic_weights if t not in TOPICS]
        problems += [f"topic_weights[{t!r}] is {w}; expected >= 0" for t, w in self.topic_weights.items() if w < 0]
        if self.topic_weights and not any(w > 0 for w in self.topic_weights.values()) and \
                len(self.topic_weights) == len(TOPICS):
            problems.append("topic_weights are all 0; expected at least one positive weight")
        if not 0.0 <= self.new_vocabulary <= 1.0:
            problems.append(f"new_vocabulary is {self.new_vocabulary}; expected a fraction in [0, 1]")
        if not 0.1 <= self.length_scale <= 20.0:
            problems.append(f"length_scale is {self.length_scale}; expected a factor in [0.1, 20]")
        if problems:
            raise ValueError("text drift: " + "; ".join(problems))


def make_texts(n_rows: int, seed: int = 0, drift: TextDrift | None = None,
               min_words: int = 6, max_words: int = 48) -> tuple[list[str], np.ndarray]:
    """``(texts, labels)``: ``n_rows`` texts and their topic index into ``list(TOPICS)``."""
    drift = drift or TextDrift()
    rng = np.random.default_rng(seed)
    topics = list(TOPICS)
    weights = np.array([drift.topic_weights.get(t, 1.0) for t in topics], float)
    labels = rng.choice(len(topics), size=n_rows, p=weights / weights.sum())
    lengths = np.maximum(1, np.round(rng.integers(min_words, max_words + 1, size=n_rows) * drift.length_scale))
    unseen = ["".join(rng.choice(_SYLLABLES, size=3)) for _ in range(200)]
    texts = []
    for label, length in zip(labels, lengths.astype(int)):
        draw = rng.random(length)
        other = rng.integers(0, len(topics) - 1, size=length)
        other = other + (other >= label)  # another topic, never the text's own
        words = []
        for i in range(length):
            if drift.new_vocabulary and rng.random() < drift.new_vocabulary:
                words.append(unseen[rng.integers(len(unseen))])
            elif draw[i] < _P_OWN:
                words.append(TOPICS[topics[label]][rng.integers(30)])
            elif draw[i] < _P_OWN + _P_OTHER:
                words.append(TOPICS[topics[other[i]]][rng.integers(30)])
            else:
                words.append(_COMMON[rng.integers(len(_COMMON))])
        texts.append(" ".join(words))
    return texts, labels.astype(np.int64)


def train_tokenizer(texts: Sequence[str], vocab_size: int = 2000) -> Any:
    """A lower-casing word-level tokenizer over the ``vocab_size - 3`` most frequent words of ``texts``
    (ties broken alphabetically); ``[PAD]`` is id 0, ``[UNK]`` 1 (any word not in the vocabulary),
    ``[CLS]`` 2.

    Hugging Face ``tokenizers`` (the Rust library behind the BERT tokenizers) normalises, splits,
    truncates, pads and serialises: its JSON file is the whole tokenizer, so serving loads exactly
    what training used. The vocabulary is counted here rather than by its trainers, whose ids depend
    on hash order and differ from process to process: every DDP rank, the export and the server must
    map a word to the same id.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.Whitespace()
    counts = Counter(word for text in texts
                     for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    ranked = sorted(counts, key=lambda w: (-counts[w], w))[:max(0, vocab_size - 3)]
    vocab = {PAD: 0, UNK: 1, CLS: 2} | {word: i + 3 for i, word in enumerate(ranked)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer, splitter
    return tokenizer


def load_tokenizer(path: str | Path) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
    """``{"input_ids", "attention_mask"}`` int64 ``(N, T)``: truncated to ``max_length`` tokens and
    padded with ``[PAD]`` (id 0, mask 0) to the longest text, ``T <= max_length``."""
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id(PAD), pad_token=PAD)
    encoded = tokenizer.encode_batch(list(texts))
    ids = np.array([e.ids for e in encoded], np.int64).reshape(len(encoded), -1)
    mask = np.array([e.attention_mask for e in encoded], np.int64).reshape(len(encoded), -1)
    return {"input_ids": ids, "attention_mask": mask}


class _Encoded(torch.utils.data.Dataset):
    """Token ids per text (unpadded) and labels; :meth:`collate` pads a batch to its longest text."""

    def __init__(self, ids: list[list[int]], labels: np.ndarray) -> None:
        self.ids, self.labels = ids, labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.ids[i], int(self.labels[i])

    @staticmethod
    def collate(items: list[tuple[list[int], int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        longest = max(len(ids) for ids, _ in items)
        input_ids = torch.zeros((len(items), longest), dtype=torch.int64)
        mask = torch.zeros((len(items), longest), dtype=torch.int64)
        for row, (ids, _) in enumerate(items):
            input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.int64)
            mask[row, :len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}, torch.tensor([y for _, y in items])


class TextDataModule(LightningDataModule):
    """Generated topic texts, a word-level tokenizer fitted on the training split, padded token batches.

    Args:
        n_rows: texts generated in all (split 70/15/15 by a seeded permutation).
        seed: generation and split seed; the same seed gives the same texts, splits and tokenizer.
        batch_size: training texts per step and process.
        eval_batch_size: validation/test batch size.
        max_length: tokens kept per text (longer texts are truncated).
        vocab_size: vocabulary size (special tokens included).
        drift: a :class:`TextDrift` applied to all splits (to make drifted traffic, not to train).
        num_workers: DataLoader workers.
        min_words: shortest text in words (one word is one token).
        max_words: longest text in words; with ``min_words >= max_length`` every text is truncated to
            ``max_length`` tokens, so every batch is ``max_length`` wide (fixed-size work for a benchmark).
        served: a Parquet file of served texts with their fed-back labels (columns ``text``, ``label``:
            topic index, ``profile``: bool), written by :func:`retraining_window` for a retraining:
            split 70/15/15 like the generated texts (same seed) and added to each split. Its
            held-out ``profile`` rows (val and test) are :meth:`profile_dataloader`, the traffic the
            retrained model will serve, which its reference profile then describes.
    """

    def __init__(self, n_rows: int = 6000, seed: int = 0, batch_size: int = 64, eval_batch_size: int = 256,
                 max_length: int = 128, vocab_size: int = 2000, drift: TextDrift | None = None,
                 num_workers: int = 0, min_words: int = 6, max_words: int = 48, served: str | None = None) -> None:
        super().__init__()
        if n_rows < 20:
            raise ValueError(f"TextDataModule: n_rows is {n_rows}; expected at least 20 to fill three splits")
        if not 1 <= min_words <= max_words:
            raise ValueError(f"TextDataModule: min_words {min_words}, max_words {max_words}; expected "
                             "1 <= min_words <= max_words")
        self.n_rows, self.seed, self.max_length, self.vocab_size = n_rows, seed, max_length, vocab_size
        self.min_words, self.max_words = min_words, max_words
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.served = served
        self.drift = drift or TextDrift()
        self.classes = list(TOPICS)
        self.tokenizer: Any = None
        self._splits: dict[str, tuple[list[str], np.ndarray]] = {}
        self._encoded: dict[str, _Encoded] = {}
        self._folder: tempfile.TemporaryDirectory[str] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def setup(self, stage: str | None = None) -> None:
        if self._encoded:
            return
        texts, labels = make_texts(self.n_rows, self.seed, self.drift, self.min_words, self.max_words)
        parts = split_indices(self.n_rows, self.seed)
        self._splits = {name: ([texts[i] for i in idx], labels[idx]) for name, idx in parts.items()}
        profile: tuple[list[str], np.ndarray] = ([], np.zeros(0, np.int64))
        if self.served is not None:
            served = _read_served(self.served, len(self.classes))
            for name, idx in split_indices(len(served), self.seed).items():
                rows = served.iloc[np.sort(idx)]
                split_texts, split_labels = self._splits[name]
                self._splits[name] = ([*split_texts, *rows["text"]],
                                      np.concatenate([split_labels, rows["label"].to_numpy(np.int64)]))
                if name != "train":  # held out from training: the reference of what it will serve
                    held = rows[rows["profile"].to_numpy(bool)]
                    profile = ([*profile[0], *held["text"]],
                               np.concatenate([profile[1], held["label"].to_numpy(np.int64)]))
        self.tokenizer = train_tokenizer(self._splits["train"][0], self.vocab_size)
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.no_padding()
        for name, (split_texts, split_labels) in {**self._splits, "profile": profile}.items():
            ids = [e.ids for e in self.tokenizer.encode_batch(split_texts)]
            self._encoded[name] = _Encoded(ids, split_labels)

    def texts(self, split: str) -> tuple[list[str], np.ndarray]:
        """Raw texts and labels of a split (what a client would send as BYTES)."""
        self.setup()
        return self._splits[split]

    def dataset_digest(self) -> str:
        """sha256 of every text and label and the generation settings: the dataset's identity."""
        self.setup()
        digest = hashlib.sha256(json.dumps({"n_rows": self.n_rows, "seed": self.seed, "drift": asdict(self.drift)},
                                           sort_keys=True, default=dict).encode())
        for name in ("train", "val", "test"):
            texts, labels = self._splits[name]
            digest.update("\n".join(texts).encode())
            digest.update(labels.tobytes())
        return digest.hexdigest()

    def artifacts(self) -> dict[str, Path]:
        """Files that travel with the model version: the tokenizer (``tokenizer.json``)."""
        self.setup()
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="modelyard-text-")
        path = Path(self._folder.name) / "tokenizer.json"
        if not path.exists():
            self.tokenizer.save(str(path))
        return {"tokenizer.json": path}

    def _loader(self, split: str, batch_size: int, sampler: Any = None) -> DataLoader:
        self.setup()
        return DataLoader(self._encoded[split], batch_size=batch_size, sampler=sampler, collate_fn=_Encoded.collate,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        sampler = DistributedSampler(self._encoded["train"], num_replicas=world, rank=rank, shuffle=True,
                                     seed=self.seed)
        return self._loader("train", self.batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    def profile_dataloader(self) -> DataLoader | None:
        """The served texts of the profile window held out from training (see ``served``); ``None``
        without them: the reference profile then describes the validation split."""
        self.setup()
        return self._loader("profile", self.eval_batch_size) if len(self._encoded["profile"]) else None


def _read_served(path: str, n_classes: int) -> Any:
    import pandas as pd

    served = pd.read_parquet(path)
    missing = {"text", "label", "profile"} - set(served.columns)
    if missing:
        raise ValueError(f"TextDataModule: served file {path} lacks column(s) {sorted(missing)}; expected text, "
                         "label (topic index) and profile (bool)")
    labels = served["label"].to_numpy()
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"TextDataModule: served file {path} has labels outside 0..{n_classes - 1}")
    return served.reset_index(drop=True)


def served_texts(features: Sequence[np.ndarray], tokenizer: Any) -> list[str]:
    """The texts of logged rows of the text model: each row as the inference log holds it, the token ids
    then the attention mask side by side (``(2T,)`` float32, :mod:`modelyard.inference.log`), decoded
    with the tokenizer of the version that answered. Words the tokenizer did not know (``[UNK]``) and
    the special tokens are left out: ``""`` for a row with none left."""
    special = {tokenizer.token_to_id(t) for t in (PAD, UNK, CLS)}
    texts = []
    for row in features:
        values = np.asarray(row, dtype=np.float64)
        if values.size % 2:
            raise ValueError(f"a logged text row has {values.size} values; expected token ids and an attention "
                             "mask of one length each")
        ids, mask = np.split(values, 2)
        kept = [int(i) for i in np.round(ids[mask > 0.5]) if int(i) not in special]
        texts.append(" ".join(str(tokenizer.id_to_token(i)) for i in kept))
    return texts


def retraining_window(window: Mapping[str, Any]) -> dict[str, Any]:
    """The monitor's retraining hook of the text workload (:mod:`modelyard.monitor.hook`): the labelled
    rows the champion answered since it went live, decoded to texts with its tokenizer, become the
    ``served`` file of a :class:`TextDataModule` with the champion's other arguments and a
    ``reference_fraction`` of newly generated texts like its own (at least 20); the rows since
    ``profile_since`` are the new reference profile's."""
    import pandas as pd
    import yaml

    from modelyard.tracking import client_for, quiet_downloads

    folder = Path(window["folder"])
    client = client_for(window["tracking_uri"])
    with quiet_downloads():
        tokenizer = load_tokenizer(client.download_artifacts(window["champion_run"], "model_files/tokenizer.json",
                                                             str(folder)))
        config = yaml.safe_load(Path(client.download_artifacts(window["champion_run"], "config.yaml",
                                                               str(folder))).read_text())
    labelled, profile = served_rows(window, (
        "its token ids: the serving log keeps the raw inputs of a text model only for log_input_sample_rate of "
        "requests (0 by default); set it above 0 in the serve config to retrain from traffic"))
    served = pd.DataFrame({"text": served_texts(labelled["features"].to_list(), tokenizer),
                           "label": labelled["label_index"].to_numpy(np.int64), "profile": profile})
    served = served[served["text"] != ""].reset_index(drop=True)
    path = folder / "served_texts.parquet"
    served.to_parquet(path, index=False)
    args = dict((config.get("data") or {}).get("init_args") or {})
    args |= {"served": str(path.resolve()), "n_rows": generated_rows(len(served), window)}
    return {"class_path": f"{TextDataModule.__module__}.{TextDataModule.__name__}", "init_args": args}
