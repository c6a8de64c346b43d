"""The statistics deployment of a ``modelyard serve ray`` application: what its ingress replicas share.

Why one small deployment holding each replica's latest snapshot, merged on read: the rollout judges
request and error counts, latency quantiles and shadow agreement *now*, per version, over every
replica. Ray's metrics (already exported per version) reach Prometheus seconds later and give
quantiles only as histogram buckets, and a status route cannot ask the other replicas of its own
deployment (a handle reaches one replica, not all). So each ingress replica keeps its own counters
and sends a cumulative snapshot here a few times a second (and at once when it applied a new traffic
configuration); ``/-/status`` merges the snapshots (:func:`~modelyard.serve.ray.stats.merge_status`),
its own taken fresh. Cumulative, not deltas: a snapshot lost or sent twice changes nothing once the
next arrives, and if this deployment's replica is replaced, the next round of snapshots rebuilds it.
A stopped ingress replica's last snapshot stays, so the sums never go back.

Live accuracy is not kept here: labels join the inference log, which every replica writes with file
names of its own, and the monitor and the rollout read all of it.
"""

import time
from typing import Any

from ray import serve

__all__ = ["TrafficStats"]


@serve.deployment(ray_actor_options={"num_cpus": 0}, num_replicas=1, max_ongoing_requests=1000)
class TrafficStats:
    """Latest snapshot per ingress replica (its Serve replica id)."""

    def __init__(self) -> None:
        self.snapshots: dict[str, dict[str, Any]] = {}

    def push(self, replica: str, snapshot: dict[str, Any]) -> None:
        """Keep ``snapshot`` as ``replica``'s latest (an older one arriving late is ignored)."""
        current = self.snapshots.get(replica)
        if current is None or snapshot["at"] >= current["at"]:
            self.snapshots[replica] = {**snapshot, "received_at": time.time()}

    def all(self) -> dict[str, dict[str, Any]]:
        """Every replica's latest snapshot, stopped replicas' included."""
        return dict(self.snapshots)

    def revisions(self) -> dict[str, str]:
        """The traffic configuration revision each replica last reported applying."""
        return {replica: snap.get("revision", "") for replica, snap in self.snapshots.items()}
