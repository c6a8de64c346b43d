"""How the controller talks to the serving ingress: a small :class:`TrafficControl` protocol, its HTTP
implementation, and the optional :class:`LabelSource` of labelled predictions (live accuracy).

The ingress (``modelyard serve``) exposes ``GET /-/status``, ``POST /-/traffic``, ``POST /-/promote`` and
``POST /-/rollback``; keeping the controller behind a protocol lets unit tests drive it with a fake.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from modelyard.errors import ModelyardError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["HttpTrafficControl", "LabelSource", "TrafficControl", "TrafficError"]

logger = logging.getLogger(__name__)


class TrafficError(ModelyardError, RuntimeError):
    """The serving ingress could not be reached or answered something unexpected."""


@runtime_checkable
class TrafficControl(Protocol):
    """Traffic split between the stable and the canary version of one served model."""

    def status(self) -> dict[str, Any]:
        """``{"weights": {"canary", "shadow"}, "versions": {"stable": {...}, "canary": {...}},
        "shadow": {"pairs", "agreement"}}``; per version: ``version``, cumulative ``requests`` and
        ``errors`` and ``predicted_classes``, sliding-window ``latency_p50_ms/p95_ms/p99_ms``."""
        ...

    def set_weights(self, canary_weight: float, shadow_weight: float = 0.0) -> None:
        """Send ``canary_weight`` of live traffic to the canary and mirror ``shadow_weight`` to it."""
        ...

    def promote(self) -> None:
        """Make the canary the stable version at 100%."""
        ...

    def rollback(self) -> None:
        """Canary weight to 0 at once."""
        ...


@runtime_checkable
class LabelSource(Protocol):
    """Labelled predictions of a served version, from labels fed back after the fact."""

    def labelled(self, version: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(true class indices, predicted class indices)`` of ``version``'s labelled rows, or ``None``."""
        ...


class HttpTrafficControl:
    """:class:`TrafficControl` against the serving ingress's control routes at ``base_url`` (stdlib
    ``urllib`` only): the serving URL, or the control port's when the server runs with ``control_port``.

    ``token``: the control token, sent as ``Authorization: Bearer``; default ``$MODELYARD_CONTROL_TOKEN``
    (the variable the server reads by default), none when unset.
    """

    def __init__(self, base_url: str, timeout_s: float = 10.0, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        token = token if token is not None else os.environ.get("MODELYARD_CONTROL_TOKEN")
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = f"{self.base_url}{path}"
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(url, data=data, method=method, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 - http(s) only
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:500].decode("utf-8", "replace").strip()
            raise TrafficError(f"{method} {url} answered HTTP {err.code} {err.reason}: "
                               f"{detail or '(no body)'}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise TrafficError(f"{method} {url} failed: {reason} (is the serving ingress running at "
                               f"{self.base_url}? timeout {self.timeout_s}s)") from None
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise TrafficError(f"{method} {url} answered non-JSON: {raw[:200]!r}") from None

    def status(self) -> dict[str, Any]:
        payload = self._call("GET", "/-/status")
        if not isinstance(payload, dict) or not isinstance(payload.get("versions"), dict):
            raise TrafficError(f"GET {self.base_url}/-/status: expected a JSON object with 'versions' "
                               f"{{'stable': ..., 'canary': ...}}, got {str(payload)[:200]}")
        return payload

    def set_weights(self, canary_weight: float, shadow_weight: float = 0.0) -> None:
        for key, value in (("canary_weight", canary_weight), ("shadow_weight", shadow_weight)):
            if not 0 <= value <= 1:
                raise ValueError(f"{key} must be within [0, 1], got {value}")
        logger.info("traffic: canary %.1f%%, shadow %.1f%%", 100 * canary_weight, 100 * shadow_weight)
        self._call("POST", "/-/traffic", {"canary_weight": float(canary_weight), "shadow_weight": float(shadow_weight)})

    def promote(self) -> None:
        logger.info("traffic: promote canary to stable")
        self._call("POST", "/-/promote", {})

    def rollback(self) -> None:
        logger.warning("traffic: roll back canary to 0%%")
        self._call("POST", "/-/rollback", {})
