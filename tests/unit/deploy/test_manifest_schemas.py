"""The vendored schemas (src/modelyard/deploy/schemas/SOURCES.md) and the validation built on them.

A validator that accepts everything would pass every manifest test, so these tests break manifests
on purpose, one way each: a missing required field, a wrong type, an unknown key, a wrong enum value.
Each must be refused, naming where.
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from modelyard.deploy.config import KubeRayConfig
from modelyard.deploy.kuberay import rayservice
from modelyard.deploy.triton import triton_deployment, triton_service
from modelyard.deploy.validate import KUBERAY_VERSION, KUBERNETES_VERSION, ManifestError, problems, validate
from modelyard.serve.ray.config import RayServeConfig

ROOT = Path(__file__).resolve().parents[3]
SCHEMAS = ROOT / "src" / "modelyard" / "deploy" / "schemas"


@pytest.fixture(scope="module")
def cfg() -> KubeRayConfig:
    return KubeRayConfig(serve=RayServeConfig(stable="@champion", log_dir="s3://bucket/log"), ray_version="2.40.0",
                         triton_repository="s3://bucket/triton_models")


def test_vendored_files_are_the_ones_sources_names():
    sources = (SCHEMAS / "SOURCES.md").read_text()
    crd = (SCHEMAS / "ray.io_rayservices.yaml").read_bytes()
    assert hashlib.sha256(crd).hexdigest() in sources
    assert f"tag `{KUBERAY_VERSION}`" in sources and "Apache-2.0" in sources
    kubernetes = json.loads((SCHEMAS / f"kubernetes-{KUBERNETES_VERSION}.json").read_text())
    for digest in kubernetes["x-modelyard-source"]["sha256"].values():
        assert digest in sources
    assert kubernetes["x-modelyard-source"]["kubernetes"] == KUBERNETES_VERSION
    # shipped with the package (the command validates before it writes)
    assert resources.files("modelyard.deploy").joinpath("schemas", "ray.io_rayservices.yaml").is_file()


def _broken(manifest: dict, path: str, value: object = None, delete: bool = False) -> dict:
    broken = copy.deepcopy(manifest)
    *parents, last = path.split("/")
    node = broken
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if delete:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return broken


RAY_CASES = [
    ("spec/rayClusterConfig/headGroupSpec/template", None, True, "headGroupSpec: 'template' is a required property"),
    ("spec/rayClusterConfig/workerGroupSpecs/0/groupName", None, True, "'groupName' is a required property"),
    ("spec/rayClusterConfig/workerGroupSpecs/0/replicas", "one", False, "replicas: 'one' is not of type 'integer'"),
    ("spec/serveConfigV2", {"applications": []}, False, "serveConfigV2: {'applications': []} is not of type 'string'"),
    ("spec/rayClusterConfig/headGroupSpec/rayStartParams/num-cpus", 0, False, "num-cpus: 0 is not of type 'string'"),
    ("spec/rayClusterConfig/headGroupSpec/template/spec/containers/0/name", None, True,
     "containers[0]: 'name' is a required property"),
    ("spec/rayClusterConfig/headGroupSpec/template/spec/containers/0/ports/0/containerPort", "6379", False,
     "containerPort: '6379' is not of type 'integer'"),
    ("spec/rayClusterConfig/rayVerison", "2.40.0", False, "Additional properties are not allowed ('rayVerison'"),
    ("spec/upgradeStrategy", {"type": "NewClusterWithIncrementalUpgrade",
                              "clusterUpgradeOptions": {"intervalSeconds": 60, "stepSizePercent": 10}}, False,
     "clusterUpgradeOptions: 'gatewayClassName' is a required property"),
]


@pytest.mark.parametrize(("path", "value", "delete", "expected"), RAY_CASES,
                         ids=[c[3].split(":")[0] + ("-missing" if c[2] else "") for c in RAY_CASES])
def test_a_broken_rayservice_is_refused(cfg, path, value, delete, expected):
    good = rayservice(cfg)
    assert problems(good) == []
    found = problems(_broken(good, path, value, delete))
    assert any(expected in p for p in found), found


K8S_CASES = [
    (triton_deployment, "spec/selector", None, True, "spec: 'selector' is a required property"),
    (triton_deployment, "spec/replicas", "2", False, "spec.replicas: '2' is not of type 'integer'"),
    (triton_deployment, "spec/template/spec/containers/0/readinessProbe/httpGet/pathh", "/", False,
     "Additional properties are not allowed ('pathh'"),
    (triton_deployment, "spec/template/spec/containers/0/ports/0/containerPort", None, True,
     "ports[0]: 'containerPort' is a required property"),
    (triton_deployment, "spec/template/spec/containers/0/resources/limits/cpu", ["4"], False,
     "is not valid under any of the given schemas"),
    (triton_service, "spec/ports/0/port", None, True, "ports[0]: 'port' is a required property"),
    (triton_service, "spec/type", 3, False, "spec.type: 3 is not of type 'string'"),
    (triton_service, "metadata/labels/app.kubernetes.io~1name", None, False, "None is not of type 'string'"),
]


@pytest.mark.parametrize(("build", "path", "value", "delete", "expected"), K8S_CASES,
                         ids=[f"{c[0].__name__}-{c[4][:30]}" for c in K8S_CASES])
def test_a_broken_triton_manifest_is_refused(cfg, build, path, value, delete, expected):
    good = build(cfg)
    assert problems(good) == []
    found = problems(_broken(good, path.replace("~1", "/"), value, delete)) if "~1" not in path else \
        problems({**good, "metadata": {**good["metadata"], "labels": {"app.kubernetes.io/name": value}}})
    assert any(expected in p for p in found), found


def test_unknown_kinds_and_nameless_objects_are_refused(cfg):
    assert problems({"apiVersion": "v1", "kind": "ConfigMap"})[0].startswith(
        "(top): apiVersion/kind 'v1'/'ConfigMap' has no vendored schema")
    nameless = triton_service(cfg)
    nameless["metadata"].pop("name")
    assert "metadata.name: required (the object's name)" in problems(nameless)
    with pytest.raises(ManifestError) as err:
        validate(nameless, "triton.yaml")
    assert str(err.value).startswith("triton.yaml: the Service breaks its schema")


def test_check_jsonschema_agrees_on_the_written_files(cfg, tmp_path):
    """The same schemas through check-jsonschema, the project's command-line validator (CI's workflow
    check): the vendored files are usable without modelyard too."""
    import yaml

    from modelyard.deploy import validate as validate_module

    schema = tmp_path / "rayservice.schema.json"
    schema.write_text(json.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema",
                                  **validate_module._rayservice_schema()}))
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    manifest = rayservice(cfg)
    good.write_text(yaml.safe_dump(manifest))
    bad.write_text(yaml.safe_dump(_broken(manifest, "spec/rayClusterConfig/workerGroupSpecs/0/replicas", "one")))
    proc = subprocess.run([sys.executable, "-m", "check_jsonschema", "--schemafile", str(schema), str(good), str(bad)],
                          capture_output=True, text=True)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 1, report
    assert f"{bad}::$.spec.rayClusterConfig.workerGroupSpecs[0].replicas: 'one' is not of type 'integer'" in report
    assert str(good) not in report
