"""Kubernetes manifests of the serving stack, written and validated offline.

``modelyard deploy kuberay`` turns a ``modelyard serve ray`` configuration into a KubeRay
``RayService`` whose ``serveConfigV2`` builds the same Ray Serve application on the cluster
(:mod:`modelyard.deploy.kuberay`), and NVIDIA's Triton container over the model repository on
object storage (:mod:`modelyard.deploy.triton`); :mod:`modelyard.deploy.validate` checks every
manifest against the vendored KubeRay CRD and Kubernetes schemas (``schemas/SOURCES.md``).
:func:`~modelyard.deploy.kuberay.weight_patch` is the in-place traffic change of a deployed
RayService. docs/kubernetes.md has the details.
"""

__all__: list[str] = []
