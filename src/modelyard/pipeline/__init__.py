"""The stages as an orchestrator's pipeline: Kubeflow Pipelines components and their pipelines.

Each stage's command (``modelyard data``, ``train``, ``export``, ``registry promote``, ``rollout
start``, ``monitor check``) becomes a container component running in the project image; the stages
hand each other identifiers (snapshot digest, run id, model version, sha256), read from the
``--output_json`` file each command writes, never in-memory objects. ``modelyard pipeline compile``
writes the pipelines as Kubeflow's YAML (:mod:`modelyard.pipeline.kubeflow`, offline, with the kfp
SDK); docs/orchestration.md shows how to run them and the same stages as an Airflow DAG.
"""

__all__: list[str] = []
