"""The MLflow Model Registry, with ``champion``/``challenger`` aliases and an audit trail of every move.

MLflow keeps no history of alias moves, so every move goes through :func:`set_alias`, which appends
an entry (who, when, alias, from version, to version, reason) to the registered model's tags in the
tracking store itself (``modelyard.audit.000001``, ...): the trail lives wherever the registry
lives, SQLite file or server, with no second database to keep in sync.
"""

from __future__ import annotations

import getpass
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from modelyard.errors import ModelyardError
from modelyard.safety import check_name, check_version
from modelyard.tracking import client_for, resolve_tracking_uri

__all__ = ["ALIASES", "AliasMove", "PromotionRefused", "history", "model_version_info", "move_alias", "record_move",
           "set_alias"]

logger = logging.getLogger(__name__)

ALIASES = ("champion", "challenger")
AUDIT_PREFIX = "modelyard.audit."
PARITY_TAG = "modelyard.parity"
# the hex sha256 of the exported ONNX file, recorded at registration and checked by the rollout preflight
SHA256_TAG = "modelyard.sha256"


class PromotionRefused(ModelyardError, RuntimeError):
    """An alias move that modelyard will not make (the message says why and what would fix it)."""


@dataclass
class AliasMove:
    seq: int
    alias: str
    from_version: str | None
    to_version: str | None
    who: str
    when: str
    reason: str

    def line(self) -> str:
        arrow = f"{self.from_version or '-'} -> {self.to_version or '-'}"
        return f"{self.seq:>4}  {self.when}  {self.alias:<10}  {arrow:<10}  {self.who:<12}  {self.reason}"


def _alias_version(client: Any, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except Exception:  # noqa: BLE001 - MlflowException when the alias is unset
        return None


def set_alias(name: str, alias: Literal["champion", "challenger"], version: str | int | None, *, reason: str,
              who: str | None = None, tracking_uri: str | None = None) -> AliasMove:
    """Point ``alias`` of model ``name`` at ``version`` (``None`` removes it) and record the move.

    Raises:
        UnsafeNameError: ``name`` is not a plain name or ``version`` not a version number.
        PromotionRefused: unknown alias, empty reason, or a version whose parity report is missing
            or failed.
        LookupError: no such model or version (the message lists the versions that exist).
    """
    check_name(name, "registered model name")
    if version is not None:
        check_version(version, f"{name} version")
    if alias not in ALIASES:
        raise PromotionRefused(f"alias {alias!r:.140} is not managed by modelyard; use one of {', '.join(ALIASES)}")
    if not reason.strip():
        raise PromotionRefused("every alias move needs a reason (--reason '...'): it is the audit trail")
    return move_alias(client_for(resolve_tracking_uri(tracking_uri)), name, alias, version, reason=reason, who=who)


def move_alias(client: Any, name: str, alias: str, version: str | int | None, *, reason: str,
               who: str | None = None) -> AliasMove:
    """:func:`set_alias` on the registry of ``client`` (names already checked): a promotion between
    environments moves the alias of the target store, whichever environment is selected."""
    _registered(client, name)
    if version is not None:
        info = _version(client, name, str(version))
        parity = info.tags.get(PARITY_TAG)
        if parity != "passed":
            state = "missing" if parity is None else parity
            raise PromotionRefused(
                f"{name} version {version} cannot become {alias!r}: its parity report is {state}. Only "
                "versions registered by `modelyard export` after passing the parity gate can be promoted.")
    previous = _alias_version(client, name, alias)
    if version is None:
        client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, str(version))
    move = record_move(client, name, alias, previous, None if version is None else str(version), reason=reason,
                       who=who)
    logger.info("%s: %s %s -> %s (%s)", name, alias, previous or "-", move.to_version or "-", move.reason)
    return move


def record_move(client: Any, name: str, alias: str, from_version: str | None, to_version: str | None, *,
                reason: str, who: str | None = None) -> AliasMove:
    """Append one entry to the audit trail of ``name`` in ``client``'s registry."""
    move = AliasMove(seq=_next_seq(client, name), alias=alias, from_version=from_version, to_version=to_version,
                     who=who or _who(), when=time.strftime("%Y-%m-%dT%H:%M:%S%z"), reason=reason.strip())
    client.set_registered_model_tag(name, f"{AUDIT_PREFIX}{move.seq:06d}",
                                    json.dumps({k: v for k, v in vars(move).items() if k != "seq"}))
    return move


def history(name: str, tracking_uri: str | None = None) -> list[AliasMove]:
    """Every alias move of ``name``, oldest first."""
    check_name(name, "registered model name")
    client = client_for(resolve_tracking_uri(tracking_uri))
    model = _registered(client, name)
    moves = []
    for key, value in model.tags.items():
        if key.startswith(AUDIT_PREFIX):
            moves.append(AliasMove(seq=int(key.removeprefix(AUDIT_PREFIX)), **json.loads(value)))
    return sorted(moves, key=lambda m: m.seq)


def model_version_info(name: str, version: str, tracking_uri: str | None = None) -> Any:
    """The MLflow ``ModelVersion`` of ``name`` ``version`` (both checked before the store is asked)."""
    check_name(name, "registered model name")
    check_version(version, f"{name} version")
    return _version(client_for(resolve_tracking_uri(tracking_uri)), name, str(version))


def _registered(client: Any, name: str) -> Any:
    try:
        return client.get_registered_model(name)
    except Exception:  # noqa: BLE001
        names = sorted(m.name for m in client.search_registered_models())
        raise LookupError(f"no registered model {name!r} in {client.tracking_uri}; registered models: "
                          f"{', '.join(names) or 'none'}") from None


def _version(client: Any, name: str, version: str) -> Any:
    try:
        return client.get_model_version(name, version)
    except Exception:  # noqa: BLE001
        versions = sorted((v.version for v in client.search_model_versions(f"name='{name}'")), key=int)
        raise LookupError(f"{name} has no version {version}; versions: {', '.join(versions) or 'none'}") from None


def _next_seq(client: Any, name: str) -> int:
    # One writer at a time is assumed (moves come from the CLI or the rollout controller); a
    # concurrent writer would overwrite the same sequence number, never corrupt another entry.
    tags = client.get_registered_model(name).tags
    seqs = [int(k.removeprefix(AUDIT_PREFIX)) for k in tags if k.startswith(AUDIT_PREFIX)]
    return max(seqs, default=0) + 1


def _who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "unknown"
