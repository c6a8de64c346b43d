"""``modelyard deploy kuberay``: the manifests it writes, read back and validated offline.

The RayService against KubeRay's CRD, the Triton Deployment and Service against Kubernetes' schemas
(both vendored, schemas/SOURCES.md); ``serveConfigV2`` against Ray Serve's own ``ServeDeploySchema``,
and its application builder called as Ray Serve calls it (no Ray started): the application it builds
has the ingress deployment the ``user_config`` is for. Then the weight patch: applied as the API
server applies an RFC 6902 patch, it changes the ingress's ``user_config`` and nothing else.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from modelyard.cli import COMMANDS
from modelyard.config import ConfigError, parse_config
from modelyard.deploy.cli import _parser
from modelyard.deploy.cli import main as deploy_main
from modelyard.deploy.config import DEFAULT_TRITON_IMAGE, KubeRayConfig
from modelyard.deploy.kuberay import BUILDER, JOURNAL_MOUNT, rayservice, serve_config_of, weight_patch, with_weights
from modelyard.deploy.run import run
from modelyard.deploy.validate import problems
from modelyard.serve.ray.config import TRAFFIC_KEYS, RayServeConfig

ROOT = Path(__file__).resolve().parents[3]
SERVE_CONFIG = ROOT / "configs" / "serve" / "fraud.yaml"
IMAGE = "registry.example.com/team/modelyard:1.2"


def _cfg(**options) -> KubeRayConfig:
    serve = options.pop("serve", {})
    return KubeRayConfig(serve=RayServeConfig(**{"model": "fraud", "stable": "@champion", "log_dir": "inference_log",
                                                 **serve}),
                         **{"state_uri": "s3://bucket/modelyard", "image": IMAGE, "ray_version": "2.40.0", **options})


def _deploy(tmp_path: Path, *args: str) -> tuple[dict, list[dict]]:
    out = tmp_path / "k8s"
    code = deploy_main(["kuberay", "--config", str(SERVE_CONFIG), "--out", str(out), "--image", IMAGE,
                     "--state_uri", "s3://bucket/modelyard", *args])
    assert code == 0
    service = yaml.safe_load((out / "rayservice.yaml").read_text())
    triton_file = out / "triton.yaml"
    triton = [d for d in yaml.safe_load_all(triton_file.read_text()) if d] if triton_file.exists() else []
    return service, triton


def test_the_command_writes_a_rayservice_that_builds_the_serve_config(tmp_path):
    service, triton = _deploy(tmp_path, "--canary", "@challenger", "--canary_weight", "0.1", "--shadow_weight",
                              "0.05", "--triton_repository", "s3://bucket/triton_models")
    assert problems(service) == []
    assert [(d["kind"], problems(d)) for d in triton] == [("Deployment", []), ("Service", [])]
    assert service["metadata"]["name"] == "modelyard-fraud"
    serve_config = serve_config_of(service)
    [app] = serve_config["applications"]
    assert app["import_path"] == BUILDER == "modelyard.serve.ray.app:build"
    expected = yaml.safe_load(SERVE_CONFIG.read_text())
    # the serve config's keys are the builder's args, except the traffic settings and the local-only ones
    for key, value in expected.items():
        if key in (*TRAFFIC_KEYS, "host", "port", "grpc_port", "metrics_port", "canary", "log_dir", "num_gpus"):
            continue
        assert app["args"][key] == value, key
    assert app["args"]["canary"] == "@challenger"
    assert app["args"]["log_dir"] == "s3://bucket/modelyard/inference_log"  # state on object storage
    assert not set(TRAFFIC_KEYS) & set(app["args"])
    assert app["deployments"] == [{"name": "fraud-ingress", "user_config": {
        "canary_weight": 0.1, "shadow_weight": 0.05, "sticky_header": "x-routing-key"}}]
    assert serve_config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    # every pod keeps the log's journal on a volume of the pod, where the replicas look for it
    for template in (service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"],
                     *(g["template"] for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"])):
        [container] = template["spec"]["containers"]
        assert {"name": "MODELYARD_LOG_JOURNAL_DIR", "value": JOURNAL_MOUNT} in container["env"]
        [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == JOURNAL_MOUNT]
        assert {"name": mount["name"], "emptyDir": {}} in template["spec"]["volumes"]


def test_gpu_target_asks_for_gpus_and_cpu_target_for_none(tmp_path):
    gpu = rayservice(_cfg(target="gpu", worker_gpus=2))
    worker = gpu["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert worker["image"] == IMAGE
    assert serve_config_of(gpu)["applications"][0]["args"]["num_gpus"] == 1.0  # per model replica
    head = gpu["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # replicas run on the workers
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]

    cpu = rayservice(_cfg(target="cpu"))
    worker = cpu["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in worker["resources"]["limits"]
    assert serve_config_of(cpu)["applications"][0]["args"]["num_gpus"] == 0.0
    assert problems(gpu) == problems(cpu) == []

    half = rayservice(_cfg(target="gpu", serve={"num_gpus": 0.5, "log_dir": "./logs/inference"}))
    assert serve_config_of(half)["applications"][0]["args"]["num_gpus"] == 0.5
    assert serve_config_of(half)["applications"][0]["args"]["log_dir"] == "s3://bucket/modelyard/logs/inference"
    kept = rayservice(_cfg(serve={"log_dir": "gs://other/log"}))
    assert serve_config_of(kept)["applications"][0]["args"]["log_dir"] == "gs://other/log"


def test_triton_runs_nvidia_container_over_the_repository_with_probes(tmp_path):
    _, (deployment, service) = _deploy(tmp_path, "--triton_repository", "s3://bucket/triton_models",
                                       "--namespace", "serving")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == DEFAULT_TRITON_IMAGE
    assert container["image"].startswith("nvcr.io/nvidia/tritonserver:") and container["image"].endswith("-py3")
    assert "--model-repository=s3://bucket/triton_models" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {p["containerPort"] for p in container["ports"]} == {8000, 8001, 8002}
    assert {p["port"] for p in service["spec"]["ports"]} == {8000, 8001, 8002}
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= \
        deployment["spec"]["template"]["metadata"]["labels"].items()
    assert deployment["metadata"]["namespace"] == service["metadata"]["namespace"] == "serving"


def test_serve_config_v2_is_a_valid_ray_serve_config_and_its_builder_builds_the_app(monkeypatch):
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import ServeDeploySchema

    from modelyard.serve.ray.app import build

    service = rayservice(_cfg(target="cpu", serve={"stable": "path:triton_models/example_fraud/1/model.onnx",
                                                   "canary": "path:triton_models/example_fraud/1/model.onnx",
                                                   "canary_weight": 0.25}))
    serve_config = serve_config_of(service)
    schema = ServeDeploySchema.model_validate(serve_config)  # Ray Serve's own check of a Serve config file
    [app_schema] = schema.applications
    assert app_schema.import_path == BUILDER
    monkeypatch.chdir(ROOT)  # relative model paths resolve in the image's working folder on the cluster
    app = call_user_app_builder_with_args_if_necessary(build, app_schema.args)  # as Ray Serve calls it
    ingress = app._bound_deployment
    assert [d.name for d in app_schema.deployments] == [ingress.name] == ["fraud-ingress"]


def test_grpc_port_becomes_the_clusters_grpc_options_and_a_port_of_every_pod():
    from ray.serve.schema import ServeDeploySchema

    from modelyard.serve.ray.kserve_grpc import SERVICER_FUNCTION

    service = rayservice(_cfg(serve={"grpc_port": 9000}))
    assert problems(service) == []
    serve_config = serve_config_of(service)
    assert serve_config["grpc_options"] == {"port": 9000, "grpc_servicer_functions": [SERVICER_FUNCTION]}
    schema = ServeDeploySchema.model_validate(serve_config)
    assert schema.grpc_options.port == 9000
    assert "grpc_port" not in serve_config["applications"][0]["args"]  # cluster-wide, not the application's
    cluster = service["spec"]["rayClusterConfig"]
    for template in (cluster["headGroupSpec"]["template"], cluster["workerGroupSpecs"][0]["template"]):
        assert {"name": "grpc", "containerPort": 9000} in template["spec"]["containers"][0]["ports"]
    plain = serve_config_of(rayservice(_cfg()))
    assert "grpc_options" not in plain
    assert all(p["name"] != "grpc" for p in rayservice(_cfg())["spec"]["rayClusterConfig"]["headGroupSpec"][
        "template"]["spec"]["containers"][0]["ports"])


def test_the_ingress_applies_the_manifests_user_config():
    """The user_config KubeRay sets is what each ingress replica's ``reconfigure`` parses."""
    from modelyard.serve.ray.ingress import KServeIngress
    from modelyard.serve.ray.router import TrafficConfig

    assert callable(KServeIngress.func_or_class.reconfigure)
    service = with_weights(rayservice(_cfg(serve={"canary": "@challenger", "canary_weight": 0.1})),
                           canary_weight=0.5, shadow_weight=0.2)
    [app] = serve_config_of(service)["applications"]
    [ingress] = app["deployments"]
    traffic = TrafficConfig.parse(ingress["user_config"])
    assert (traffic.canary_weight, traffic.shadow_weight, traffic.promoted) == (0.5, 0.2, False)


def test_builder_args_are_checked_like_the_serve_config():
    from modelyard.serve.ray.app import build

    with pytest.raises(ConfigError) as err:
        build({"model": "fraud", "stabel": "@champion", "max_batch_size": 0})
    text = str(err.value)
    assert "Ray Serve application args" in text and "'stabel'" in text and "did you mean 'stable'" in text


def test_weight_patch_changes_the_ingress_user_config_only():
    import jsonpatch

    before = rayservice(_cfg(serve={"canary": "@challenger", "canary_weight": 0.1}))
    patch = weight_patch(before, canary_weight=0.5, shadow_weight=0.2)
    assert [op["op"] for op in patch] == ["test", "replace"]
    assert {op["path"] for op in patch} == {"/spec/serveConfigV2"}
    after = jsonpatch.apply_patch(before, patch)
    assert after == with_weights(before, canary_weight=0.5, shadow_weight=0.2)
    assert problems(after) == []
    old, new = serve_config_of(before), serve_config_of(after)
    assert new["applications"][0]["deployments"][0]["user_config"] == {
        "canary_weight": 0.5, "shadow_weight": 0.2, "sticky_header": "x-routing-key"}
    new["applications"][0]["deployments"][0]["user_config"] = old["applications"][0]["deployments"][0]["user_config"]
    assert new == old  # args unchanged: Ray Serve reconfigures the ingress in place, nothing is redeployed
    rest_before, rest_after = copy.deepcopy(before), copy.deepcopy(after)
    del rest_before["spec"]["serveConfigV2"], rest_after["spec"]["serveConfigV2"]
    assert rest_before == rest_after  # rayClusterConfig unchanged: KubeRay keeps the cluster

    # a patch computed from a stale copy fails its test instead of undoing a later change
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(after, patch)


def test_weight_patch_refuses_bad_weights():
    manifest = rayservice(_cfg())  # no canary
    with pytest.raises(ConfigError, match="need a canary reference"):
        weight_patch(manifest, canary_weight=0.2)
    with pytest.raises(ConfigError, match="canary_weight must be a number"):
        weight_patch(rayservice(_cfg(serve={"canary": "@challenger"})), canary_weight=1.5)
    with pytest.raises(ConfigError, match="unknown traffic setting 'canary'"):
        weight_patch(manifest, canary="@other")
    with pytest.raises(ValueError, match="expected a RayService manifest"):
        weight_patch({"kind": "Deployment"}, canary_weight=0.0)


def test_weights_command_prints_the_patch_and_rewrites_the_file(tmp_path, capsys):
    _deploy(tmp_path, "--canary", "@challenger")
    path = tmp_path / "k8s" / "rayservice.yaml"
    patch_file = tmp_path / "patch.json"
    assert deploy_main(["weights", "--rayservice", str(path), "--canary_weight", "0.25", "--write", "true",
                     "--patch_json", str(patch_file)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed == f"kubectl patch rayservice modelyard-fraud --type=json --patch-file {patch_file}"
    patch = json.loads(patch_file.read_text())
    assert yaml.safe_load(patch[1]["value"])["applications"][0]["deployments"][0]["user_config"]["canary_weight"] \
        == 0.25
    rewritten = yaml.safe_load(path.read_text())
    assert rewritten["spec"]["serveConfigV2"] == patch[1]["value"]
    assert path.read_text().startswith("# KubeRay RayService")


@pytest.mark.parametrize(("args", "expected"), [
    ([], "log_dir 'inference_log' is a folder of one pod"),
    (["--state_uri", "s3://b/p", "--triton_repository", "triton_models"], "triton_repository must be on object "
                                                                            "storage (s3://, gs://, as://)"),
    (["--state_uri", "s3://b/p", "--name", "Fraud_Service"], "name must be an RFC 1123 label"),
    (["--state_uri", "s3://b/p", "--target", "tpu"], "target"),
    (["--state_uri", "s3://b/p", "--worker_memory", "lots"], "worker_memory must be a Kubernetes quantity"),
    (["--state_uri", "s3://b/p", "--target", "cpu", "--num_gpus", "1"], "num_gpus=1.0 (GPUs per model replica) "
                                                                        "needs --target gpu"),
    (["--state_uri", "s3://b/p", "--imgae", "x"], "did you mean 'image'"),
    (["--state_uri", "s3://b/p", "--log_dir", "../elsewhere"], "log_dir '../elsewhere' leaves state_uri"),
    (["--state_uri", "/data/modelyard"], "state_uri must be a URI such as s3://bucket/modelyard"),
])
def test_bad_options_are_refused_naming_the_fix(tmp_path, args, expected):
    argv = ["--config", str(SERVE_CONFIG), "--out", str(tmp_path), *args]
    with pytest.raises(ConfigError) as err:
        parse_config(KubeRayConfig, argv, prog="modelyard deploy kuberay", parser=_parser("kuberay"))
    assert expected in str(err.value)
    assert not any(tmp_path.iterdir())


def test_help_lists_the_serve_keys_and_the_cluster_options(capsys):
    assert "deploy" in COMMANDS  # `modelyard deploy ...` runs deploy_main
    assert deploy_main(["kuberay", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--config", "--canary_weight", "--log_dir", "--out", "--image", "--target", "--triton_repository",
                   "--state_uri", "--worker_gpus", "--ray_version"):
        assert option in text, option
    assert deploy_main([]) == 2
    assert deploy_main(["helm"]) == 2
    assert "expected one of: kuberay, weights" in capsys.readouterr().err


def test_run_writes_nothing_when_a_manifest_breaks_its_schema(tmp_path, monkeypatch):
    from modelyard.deploy import run as run_module
    from modelyard.deploy.validate import ManifestError

    broken = rayservice(_cfg(out=str(tmp_path)))
    del broken["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    monkeypatch.setattr(run_module, "rayservice", lambda cfg: broken)
    with pytest.raises(ManifestError, match="headGroupSpec: 'template' is a required property"):
        run(_cfg(out=str(tmp_path)))
    assert not any(tmp_path.iterdir())


def test_the_project_image_has_what_kuberay_runs_in_it():
    """KubeRay runs `ulimit -n 65536; ray start ...` under /bin/bash in the Ray container and probes it with
    `wget ... | grep success`: the image (Dockerfile.cuda) must have bash, Ray and wget."""
    dockerfile = (ROOT / "Dockerfile.cuda").read_text()
    assert re.search(r"apt-get install[^&;|]*\bwget\b", dockerfile)
    assert "FROM nvidia/cuda:" in dockerfile and "ubuntu" in dockerfile  # bash is in the base image
    assert re.search(r'"ray\[serve', (ROOT / "pyproject.toml").read_text())
