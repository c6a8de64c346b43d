"""Canary/shadow traffic split of the Ray Serve ingress (pure Python, no Ray).

Ray Serve has had no weighted traffic split between deployments since 1.5, so the ingress decides
per request: with a routing key (a header), a stable hash of the key places it in [0, 1) and the
request goes to the canary when that point is below the canary weight -- a key never moves while the
weight stays put, and raising the weight only moves keys from stable to canary. Without a key the
choice is random with the weight, drawn from shuffled blocks so the observed share tracks the weight
closely (independent coin flips would need ~7,500 requests to be within +-1 point at 95%).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["DEPLOYED_REVISION", "Route", "TrafficConfig", "TrafficRouter", "key_point", "validate_weights"]

Role = Literal["stable", "canary"]

# Decisions per shuffled block of keyless requests: the share is exact over every full block.
BLOCK = 100
# The revision of the configuration an application is deployed with: sorts before every later one.
DEPLOYED_REVISION = "0-deployed"


def key_point(key: str, salt: str = "canary") -> float:
    """A stable point in [0, 1) for ``key`` (the same in every process: no PYTHONHASHSEED)."""
    digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def validate_weights(weights: object) -> dict[str, float]:
    """``{"canary_weight": w, "shadow_weight": s}`` (either may be absent) checked to be numbers in [0, 1].

    Raises:
        ValueError: naming the key, the value received and what is expected.
    """
    if not isinstance(weights, dict):
        raise ValueError(f'expected a JSON object like {{"canary_weight": 0.25, "shadow_weight": 0.0}}, '
                         f"got {type(weights).__name__}")
    unknown = sorted(set(weights) - {"canary_weight", "shadow_weight"})
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; expected canary_weight and/or shadow_weight")
    if not weights:
        raise ValueError("no weights given; expected canary_weight and/or shadow_weight")
    out = {}
    for key, value in weights.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{key} must be a number within [0, 1], got {value!r}")
        out[key] = float(value)
    return out


@dataclass(frozen=True)
class TrafficConfig:
    """The traffic part of the application's configuration: the ingress deployment's ``user_config``.

    Every ingress replica applies the same one (Ray Serve calls ``reconfigure`` on each, in place), so
    any number of replicas route alike, and a replica that starts later gets it too.

    Args:
        canary_weight: share of requests answered by the canary (0..1).
        shadow_weight: share of stable requests mirrored to the canary (0..1).
        sticky_header: request header whose value pins a caller to one version.
        promoted: the version deployed as canary serves as stable, and there is no canary.
        revision: names this configuration (``<epoch ns>-<random>``, so later ones sort after; the
            deployed one is :data:`DEPLOYED_REVISION`); a replica reports the revision it applied, which is how a
            change is known to have reached every replica.
    """

    canary_weight: float = 0.0
    shadow_weight: float = 0.0
    sticky_header: str = "x-routing-key"
    promoted: bool = False
    revision: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parse(cls, value: object) -> TrafficConfig:
        """``value`` (a ``user_config``) checked: known keys, weights in [0, 1], a non-empty header.

        Raises:
            ValueError: naming every key that is wrong, the value received and what is expected.
        """
        if not isinstance(value, dict):
            raise ValueError(f"traffic user_config must be a mapping like {cls().to_dict()}, got "
                             f"{type(value).__name__}")
        known = set(cls.__dataclass_fields__)
        problems = [f"unknown key {key!r}; expected some of {sorted(known)}" for key in sorted(set(value) - known)]
        weights = {k: value[k] for k in ("canary_weight", "shadow_weight") if k in value}
        if weights:
            try:
                validate_weights(weights)
            except ValueError as err:
                problems.append(str(err))
        header = value.get("sticky_header", cls.sticky_header)
        if not isinstance(header, str) or not header.strip():
            problems.append(f"sticky_header must be a non-empty header name, got {header!r}")
        for key, kind in (("promoted", bool), ("revision", str)):
            if key in value and not isinstance(value[key], kind):
                problems.append(f"{key} must be a {kind.__name__}, got {value[key]!r}")
        if problems:
            raise ValueError("bad traffic user_config: " + "; ".join(problems))
        return cls(**{k: (float(v) if k in weights else v) for k, v in value.items()})


@dataclass(frozen=True)
class Route:
    """Where one request goes: ``target`` answers, ``shadow`` also receives a copy in the background."""

    target: Role
    shadow: bool


@dataclass
class TrafficRouter:
    """Canary and shadow weights and the per-request choice."""

    canary_weight: float = 0.0
    shadow_weight: float = 0.0
    has_canary: bool = False
    seed: int | None = None
    _rng: random.Random = field(init=False, repr=False)
    _block: list[bool] = field(init=False, repr=False, default_factory=list)
    _owed: float = field(init=False, repr=False, default=0.0)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self.set_weights(canary_weight=self.canary_weight, shadow_weight=self.shadow_weight)

    def set_weights(self, canary_weight: float | None = None, shadow_weight: float | None = None) -> None:
        """Change weights; takes effect for the next request (in-flight ones keep their route)."""
        validate_weights({k: v for k, v in (("canary_weight", canary_weight), ("shadow_weight", shadow_weight))
                          if v is not None} or {"canary_weight": self.canary_weight})
        if (canary_weight or shadow_weight) and not self.has_canary:
            raise ValueError(f"canary_weight={canary_weight}/shadow_weight={shadow_weight} received, but no canary "
                             "is deployed; expected 0")
        if canary_weight is not None and canary_weight != self.canary_weight:
            self.canary_weight = canary_weight
            self._block, self._owed = [], 0.0  # a new weight starts a new block
        if shadow_weight is not None:
            self.shadow_weight = shadow_weight

    def choose(self, key: str | None = None) -> Route:
        """The route of one request; ``key`` is the routing-key header's value, if any."""
        if not self.has_canary:
            return Route("stable", False)
        if key:
            target: Role = "canary" if key_point(key) < self.canary_weight else "stable"
        else:
            target = "canary" if self._next_keyless() else "stable"
        shadow = target == "stable" and self.shadow_weight > 0 and self._rng.random() < self.shadow_weight
        return Route(target, shadow)

    def _next_keyless(self) -> bool:
        if self.canary_weight <= 0.0:
            return False
        if self.canary_weight >= 1.0:
            return True
        if not self._block:
            # Carry the fractional part so weights like 0.255 average out across blocks.
            self._owed += self.canary_weight * BLOCK
            n = int(self._owed)
            self._owed -= n
            self._block = [True] * n + [False] * (BLOCK - n)
            self._rng.shuffle(self._block)
        return self._block.pop()

    def promote(self) -> None:
        """The canary became stable: no canary any more, all traffic to (the new) stable."""
        self.has_canary = False
        self.canary_weight, self.shadow_weight = 0.0, 0.0
        self._block, self._owed = [], 0.0

    def rollback(self) -> None:
        """Canary and shadow weight 0 at once; the canary stays deployed."""
        self.canary_weight, self.shadow_weight = 0.0, 0.0
        self._block, self._owed = [], 0.0
