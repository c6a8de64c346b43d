"""docs/kubernetes.md and the README's cluster section: every ``modelyard deploy`` command they show
parses with the real parsers, and the weight patch they describe is the one ``weight_patch`` writes."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from modelyard.config import parse_config
from modelyard.deploy.cli import WeightsConfig, _parser
from modelyard.deploy.config import KubeRayConfig
from modelyard.deploy.kuberay import rayservice, weight_patch
from modelyard.serve.ray.config import RayServeConfig

ROOT = Path(__file__).resolve().parents[3]
DOCS = [ROOT / "docs" / "kubernetes.md", ROOT / "README.md"]


def _deploy_commands(text: str) -> list[list[str]]:
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] == ["modelyard", "deploy"]:
                commands.append(words[2:])
    return commands


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_documented_deploy_commands_parse(doc):
    commands = _deploy_commands(doc.read_text())
    assert {c[0] for c in commands} == {"kuberay", "weights"}
    for action, *args in commands:
        if action == "kuberay":
            args = [a if a != "configs/serve/fraud.yaml" else str(ROOT / a) for a in args]
            parse_config(KubeRayConfig, args, prog="modelyard deploy kuberay", parser=_parser("kuberay"))
        else:
            parse_config(WeightsConfig, args, prog="modelyard deploy weights")


def test_the_documented_patch_is_the_written_one():
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    shown = json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1))
    cfg = KubeRayConfig(serve=RayServeConfig(stable="@champion", canary="@challenger", log_dir=None),
                        ray_version="2.40.0")
    patch = weight_patch(rayservice(cfg), canary_weight=0.25)
    assert [(op["op"], op["path"]) for op in shown] == [(op["op"], op["path"]) for op in patch]
    assert "kubectl patch rayservice modelyard-fraud --type=json --patch-file" in text
