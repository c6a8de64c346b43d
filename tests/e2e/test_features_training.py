"""From the feature store to a trained model, as a user runs it: events -> Feast -> point-in-time
training table -> snapshot -> ``modelyard train --config configs/train/cards.yaml``."""

from __future__ import annotations

import pandas as pd
from test_cli import ROOT, modelyard

from modelyard.cli import main
from modelyard.features import MODEL_COLUMNS

CARDS = str(ROOT / "configs" / "features" / "cards.yaml")
SCHEMA = str(ROOT / "configs" / "data" / "schemas" / "card_transactions.yaml")


def test_a_model_trains_on_the_feature_stores_historical_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config's relative data/features and data/store land here
    small = ["--cards", "60", "--days", "8", "--fraud_card_rate", "0.2"]
    for action in ("events", "apply", "historical"):
        assert main(["features", action, "--config", CARDS, *small]) == 0, action
    table = pd.read_parquet(tmp_path / "data" / "features" / "training.parquet")
    assert list(table.columns) == [*MODEL_COLUMNS, "is_fraud"] and table["is_fraud"].nunique() == 2
    assert main(["data", "--dataset", "file", "--source", "data/features/training.parquet", "--schema", SCHEMA,
                 "--name", "card_transactions"]) == 0

    proc = modelyard("train", "--config", str(ROOT / "configs" / "train" / "cards.yaml"), "--trainer.devices", "1",
                     "--trainer.strategy", "auto", "--trainer.max_epochs", "1", cwd=tmp_path)
    assert proc.returncode == 0
    assert "best val_auroc = " in proc.stdout

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("cards").experiment_id])
    assert run.info.status == "FINISHED"
    [dataset] = run.inputs.dataset_inputs
    assert dataset.dataset.name == "card_transactions"
