"""The built-in text workload: generated topic texts with drift knobs, a trained tokenizer that
travels as a file, padded batches in the batch convention, and a classifier with two outputs."""

from __future__ import annotations

import lightning
import numpy as np
import pytest
import torch

from modelyard.models import TextClassifier
from modelyard.models.batch import call_model, named_outputs, split_batch
from modelyard.signature import Signature
from modelyard.workloads.text import TOPICS, TextDataModule, TextDrift, encode_texts, load_tokenizer, make_texts


def test_texts_are_deterministic_by_seed_and_each_drift_knob_moves_what_it_names():
    texts, labels = make_texts(400, seed=3)
    again, labels_again = make_texts(400, seed=3)
    assert texts == again and np.array_equal(labels, labels_again)
    assert make_texts(400, seed=4)[0] != texts

    longer, _ = make_texts(400, seed=3, drift=TextDrift(length_scale=2.0))
    assert np.mean([len(t.split()) for t in longer]) > 1.7 * np.mean([len(t.split()) for t in texts])

    _, skewed = make_texts(400, seed=3, drift=TextDrift(topic_weights={"sport": 9.0}))
    assert np.mean(skewed == list(TOPICS).index("sport")) > 0.6

    known = {w for t in texts for w in t.split()}
    novel, _ = make_texts(400, seed=3, drift=TextDrift(new_vocabulary=0.5))
    words = [w for t in novel for w in t.split()]
    assert 0.35 < np.mean([w not in known for w in words]) < 0.65


def test_drift_knobs_refuse_values_outside_their_range():
    with pytest.raises(ValueError, match="unknown topic 'cooking'"):
        TextDrift(topic_weights={"cooking": 1.0})
    with pytest.raises(ValueError, match="new_vocabulary is 1.5; expected a fraction in \\[0, 1\\]"):
        TextDrift(new_vocabulary=1.5)


def test_texts_longer_than_max_length_make_every_batch_max_length_wide():
    """min_words >= max_length: every text is truncated, so every batch is (B, max_length) (the GPU
    benchmark's fixed-size steps); the default lengths pad each batch to its longest text instead."""
    fixed = TextDataModule(n_rows=60, seed=0, batch_size=8, max_length=16, min_words=16, max_words=20)
    widths = {split_batch(b)[0]["input_ids"].shape[1] for b in fixed.train_dataloader()}
    assert widths == {16}
    assert all(16 <= len(t.split()) <= 20 for t in fixed.texts("train")[0])
    assert fixed.dataset_digest() != TextDataModule(n_rows=60, seed=0).dataset_digest()
    with pytest.raises(ValueError, match="min_words 9, max_words 8"):
        TextDataModule(min_words=9, max_words=8)


def test_batches_follow_the_convention_with_a_length_that_varies_and_a_tokenizer_file(tmp_path):
    dm = TextDataModule(n_rows=300, seed=0, batch_size=16, max_length=24)
    dm.setup()
    lengths = set()
    for batch in dm.val_dataloader():
        inputs, target = split_batch(batch)
        assert set(inputs) == {"input_ids", "attention_mask"} and inputs["input_ids"].dtype == torch.int64
        assert inputs["input_ids"].shape == inputs["attention_mask"].shape and target.dtype == torch.int64
        assert inputs["input_ids"].shape[1] <= 24
        lengths.add(inputs["input_ids"].shape[1])
        # padding is id 0 exactly where the mask is 0
        assert torch.equal(inputs["input_ids"] == 0, inputs["attention_mask"] == 0)
    assert len(lengths) >= 1

    tokenizer = load_tokenizer(dm.artifacts()["tokenizer.json"])
    texts, _ = dm.texts("val")
    served = encode_texts(tokenizer, texts[:5], max_length=24)
    trained = [dm.tokenizer.encode(t).ids for t in texts[:5]]
    for row, ids in enumerate(trained):
        assert served["input_ids"][row, :len(ids)].tolist() == ids
        assert served["attention_mask"][row].sum() == len(ids)

    assert dm.dataset_digest() == TextDataModule(n_rows=300, seed=0).dataset_digest()
    assert dm.dataset_digest() != TextDataModule(n_rows=300, seed=1).dataset_digest()


def test_unseen_vocabulary_reaches_the_model_as_unknown_tokens():
    dm = TextDataModule(n_rows=300, seed=0)
    dm.setup()
    texts, _ = make_texts(100, seed=9, drift=TextDrift(new_vocabulary=0.5))
    unk = dm.tokenizer.token_to_id("[UNK]")
    plain = encode_texts(dm.tokenizer, dm.texts("val")[0][:100], 128)["input_ids"]
    drifted = encode_texts(dm.tokenizer, texts, 128)["input_ids"]
    assert (plain == unk).mean() == 0  # every word of the validation texts was seen in training
    assert (drifted[drifted != 0] == unk).mean() > 0.3  # about half the words are new: [UNK]


def test_the_tokenizer_maps_a_word_to_the_same_id_in_every_process():
    """DDP ranks, the export and the server each fit or load the tokenizer: ids must not depend on
    the process (hash order), or rank 1 would train on other ids than rank 0."""
    import subprocess
    import sys

    code = ("import json; from modelyard.workloads.text import make_texts, train_tokenizer; "
            "print(json.dumps(sorted(train_tokenizer(make_texts(500, seed=2)[0], 300).get_vocab().items())))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) > 100


@pytest.mark.slow
def test_the_classifier_learns_the_topics_and_exports_with_a_dynamic_sequence_axis():
    lightning.seed_everything(0)
    dm = TextDataModule(n_rows=1200, seed=0, batch_size=32, eval_batch_size=32, max_length=64)
    model = TextClassifier(num_classes=dm.num_classes, vocab_size=dm.vocab_size, max_length=64, d_model=32,
                           n_layers=1, n_heads=2, lr=5e-3, warmup_steps=5)
    trainer = lightning.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    assert trainer.callback_metrics["val_acc"] > 0.6  # four balanced topics: chance is 0.25

    model.eval()
    samples = [split_batch(b)[0] for b, _ in zip(dm.val_dataloader(), range(3))]
    with torch.no_grad():
        outputs = [named_outputs(call_model(model, s)) for s in samples]
    sig = Signature.infer(samples, outputs, axis_names={"dim1": "seq"}, bounds={"seq": 64})
    assert [t.shape for t in sig.inputs] == [("batch", "seq"), ("batch", "seq")]
    assert [(t.name, t.shape) for t in sig.outputs] == [("logits", ("batch", 4)), ("embedding", ("batch", 32))]

    program = torch.export.export(model, (), samples[0], dynamic_shapes=sig.torch_dynamic_shapes())
    other = {"input_ids": torch.randint(1, dm.vocab_size, (5, 37)),
             "attention_mask": torch.ones(5, 37, dtype=torch.int64)}
    with torch.no_grad():
        exported, eager = program.module()(**other), model(**other)
    assert torch.allclose(exported["logits"], eager["logits"], atol=1e-4)
