"""Named environments: the file, the selection, and every stage reading its own registry only."""

from __future__ import annotations

import os

import pytest
import yaml

from modelyard.cli import main
from modelyard.environments import EnvironmentConfigError, load_environments, selected_environment
from modelyard.tracking import resolve_tracking_uri


@pytest.fixture
def envs_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODELYARD_ENV", raising=False)
    monkeypatch.delenv("MODELYARD_ENVIRONMENTS", raising=False)
    monkeypatch.setenv("PROD_URI", "http://mlflow.prod:5000")
    (tmp_path / "configs").mkdir()
    file = tmp_path / "configs" / "environments.yaml"
    file.write_text(yaml.safe_dump({"environments": {
        "dev": {"tracking_uri": "sqlite:///envs/dev.db"},
        "staging": {"tracking_uri": "sqlite:///envs/staging.db", "promote_from": ["dev"]},
        "prod": {"tracking_uri": "${PROD_URI}", "promote_from": "staging", "promote_only": True},
    }}, sort_keys=False))
    return file


def test_the_file_is_found_in_configs_and_read_in_order(envs_file, tmp_path):
    envs = load_environments()
    assert list(envs.environments) == ["dev", "staging", "prod"]
    assert envs.get("dev").tracking_uri == f"sqlite:///{tmp_path / 'envs' / 'dev.db'}"  # absolute from now on
    assert envs.get("prod").tracking_uri == "http://mlflow.prod:5000"  # variables expanded
    assert envs.get("prod").promote_from == ("staging",) and envs.get("prod").promote_only


def test_a_variable_with_a_default_takes_the_default_when_unset(tmp_path, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    monkeypatch.setenv("SET_HERE", "http://set:5000")
    file = tmp_path / "environments.yaml"
    file.write_text(yaml.safe_dump({"environments": {
        "a": {"tracking_uri": "${NOT_SET_ANYWHERE:-http://fallback:5000}"},
        "b": {"tracking_uri": "${SET_HERE:-http://fallback:5000}"}}}))
    envs = load_environments(file)
    assert (envs.get("a").tracking_uri, envs.get("b").tracking_uri) == ("http://fallback:5000", "http://set:5000")


def test_an_export_into_a_promote_only_environment_is_refused_before_any_work(envs_file, monkeypatch):
    from modelyard.export.config import ExportConfig
    from modelyard.export.run import run

    monkeypatch.setenv("MODELYARD_ENV", "prod")
    with pytest.raises(EnvironmentConfigError, match="takes versions by promotion only .* --to prod"):
        run(ExportConfig(run="latest"), write_model_version=lambda *a, **k: pytest.fail("nothing is written"))


def test_no_file_and_no_selection_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODELYARD_ENV", raising=False)
    monkeypatch.delenv("MODELYARD_ENVIRONMENTS", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://other:5000")
    assert load_environments() is None and selected_environment() is None
    assert resolve_tracking_uri() == "http://other:5000"
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_a_selected_environment_fixes_the_store_of_every_stage(envs_file, monkeypatch):
    monkeypatch.setenv("MODELYARD_ENV", "prod")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://somewhere-else:5000")
    assert resolve_tracking_uri() == "http://mlflow.prod:5000"
    assert resolve_tracking_uri("http://mlflow.prod:5000") == "http://mlflow.prod:5000"
    with pytest.raises(EnvironmentConfigError, match="names tracking_uri sqlite:///other.db but environment 'prod'"):
        resolve_tracking_uri("sqlite:///other.db")


def test_an_unknown_environment_names_the_ones_there(envs_file, monkeypatch):
    monkeypatch.setenv("MODELYARD_ENV", "qa")
    with pytest.raises(EnvironmentConfigError, match="no environment 'qa' .* dev, staging, prod"):
        resolve_tracking_uri()


def test_a_selection_without_a_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODELYARD_ENVIRONMENTS", raising=False)
    monkeypatch.setenv("MODELYARD_ENV", "prod")
    with pytest.raises(EnvironmentConfigError, match="no environments file"):
        selected_environment()


@pytest.mark.parametrize(("content", "words"), [
    ({"environments": {"dev": {}}}, "tracking_uri is missing"),
    ({"environments": {"dev": {"tracking_uri": "sqlite:///a.db", "colour": 1}}}, "unknown key 'colour'"),
    ({"environments": {"dev": {"tracking_uri": "sqlite:///a.db"}, "qa": {"tracking_uri": "sqlite:///a.db"}}},
     "share the registry"),
    ({"environments": {"prod": {"tracking_uri": "sqlite:///a.db", "promote_from": ["staging"]}}},
     "promote_from names 'staging', which is not an environment"),
    ({"environments": {"prod": {"tracking_uri": "${NOT_SET_ANYWHERE}"}}}, "unset variable"),
    ({"envs": {}}, "unknown key 'envs'"),
    ([1, 2], "expected a mapping"),
])
def test_a_bad_file_lists_what_is_wrong(tmp_path, monkeypatch, content, words):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    file = tmp_path / "environments.yaml"
    file.write_text(yaml.safe_dump(content))
    with pytest.raises(EnvironmentConfigError, match=words):
        load_environments(file)


def test_the_env_option_selects_for_the_command_and_its_children(envs_file, monkeypatch, capsys):
    monkeypatch.setenv("MODELYARD_ENV", "")  # monkeypatch restores what `--env` sets below
    assert main(["--env", "staging", "registry", "environments"]) == 0
    out = capsys.readouterr().out
    assert "* staging" in out and "promoted from dev" in out and "promotion only" in out
    assert os.environ["MODELYARD_ENV"] == "staging"  # inherited by training workers
    assert main(["--env", "qa", "registry", "environments"]) == 2
    assert "no environment 'qa'" in capsys.readouterr().err
