"""Helpers of the soak test: the processes of a Ray Serve application and their resident memory."""

from __future__ import annotations

import numpy as np

from reliability_helpers import rss_bytes

MIB = 1024 * 1024


def serve_process_pids(app_name: str = "modelyard") -> dict[str, int]:
    """``{role: pid}`` of the live Ray Serve processes that carry traffic: the HTTP proxy, and each
    replica of application ``app_name`` (ingress and model versions), e.g. ``"replica fraud-v1"``.

    Read from Ray's actor table in the GCS. ``ray.util.state.list_actors`` would be the public way,
    but it asks the dashboard's API server, which the local Ray that ``modelyard serve ray`` starts
    leaves out (``include_dashboard=False``); the GCS table holds the same actors and pids.

    Raises:
        RuntimeError: no proxy or no replica of ``app_name`` is alive (nothing to measure).
    """
    from ray._private import state

    out: dict[str, int] = {}
    for actor in state.actors().values():
        if actor.get("State") != "ALIVE" or not actor.get("Pid"):
            continue
        cls = actor.get("ActorClassName", "")
        if cls == "ProxyActor":
            out[f"proxy {actor.get('Name', '')[-8:]}"] = int(actor["Pid"])
        elif cls.startswith(f"ServeReplica:{app_name}:"):
            deployment = cls.split(":", 2)[2]
            out[f"replica {deployment} {actor.get('Name', '')[-8:]}"] = int(actor["Pid"])
    if not any(k.startswith("proxy") for k in out) or not any(k.startswith("replica") for k in out):
        raise RuntimeError(f"Ray Serve processes of application {app_name!r} not found; alive: {sorted(out)}")
    return out


def rss_mib(pids: dict[str, int]) -> dict[str, float]:
    """Resident memory of each process, in MiB (0 for one that is gone)."""
    return {role: rss_bytes(pid) / MIB for role, pid in pids.items()}


def percentile_ms(latencies_s: list[float], q: float) -> float:
    """The ``q``-th percentile of ``latencies_s``, in milliseconds (NaN for none)."""
    return float(np.percentile(np.asarray(latencies_s) * 1000.0, q)) if latencies_s else float("nan")
