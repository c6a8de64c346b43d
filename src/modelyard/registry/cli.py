"""``modelyard registry``: versions, audited alias moves and their history."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from jsonargparse import ArgumentParser

from modelyard.registry.store import ALIASES, history, set_alias
from modelyard.safety import check_name
from modelyard.tracking import client_for, resolve_tracking_uri

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

# name -> one-line summary
SUBCOMMANDS = {
    "show": "versions of a model with their aliases, parity and lineage tags",
    "history": "every alias move of a model: who, when, alias, from, to, reason",
    "promote": "point an alias at a version (refused unless its parity gate passed)",
    "demote": "remove an alias",
}


def build_parser() -> ArgumentParser:
    """``modelyard registry``: its sub-commands, each with its own options; usage errors exit 2."""
    parser = ArgumentParser(
        prog="modelyard registry",
        description="The MLflow Model Registry as modelyard manages it: every alias move is audited.")
    parser.add_argument("--tracking_uri", type=str | None, default=None,
                        help="default: $MLFLOW_TRACKING_URI, else ./mlflow.db")
    commands = parser.add_subcommands(dest="action", title="commands")
    for action, summary in SUBCOMMANDS.items():
        sub = ArgumentParser(prog=f"modelyard registry {action}", description=summary)
        sub.add_argument("name", type=str, help="the registered model name")
        if action == "promote":
            sub.add_argument("--version", type=str, required=True, help="the model version to point the alias at")
        if action in ("promote", "demote"):
            sub.add_argument("--alias", type=Literal[ALIASES], default="champion", help="the alias to move")
            sub.add_argument("--reason", type=str, required=True, help="why; recorded in the audit trail")
            sub.add_argument("--who", type=str | None, default=None,
                             help="recorded as the author (default: the login name)")
        commands.add_subcommand(action, sub, help=summary)
    return parser


def main(argv: Sequence[str]) -> int:
    """Run ``modelyard registry [--tracking_uri URI] ACTION NAME [options]``."""
    parsed = build_parser().parse_args(list(argv))
    action = parsed.action
    args = parsed[action]
    args.tracking_uri = parsed.tracking_uri
    args.action = action
    if args.action == "history":
        moves = history(args.name, args.tracking_uri)
        print(f"{'seq':>4}  {'when':<24}  {'alias':<10}  {'from -> to':<10}  {'who':<12}  reason")
        for move in moves:
            print(move.line())
        if not moves:
            print(f"(no alias moves recorded for {args.name})")
    elif args.action == "show":
        check_name(args.name, "registered model name")  # also keeps quotes out of the search filter below
        client = client_for(resolve_tracking_uri(args.tracking_uri))
        found = client.search_model_versions(f"name='{args.name}'")
        if not found:
            raise LookupError(f"no versions of {args.name!r} in {client.tracking_uri}")
        for v in sorted(found, key=lambda v: int(v.version)):
            v = client.get_model_version(args.name, v.version)  # search results carry no aliases
            aliases = ",".join(v.aliases) or "-"
            print(f"v{v.version:<4} aliases {aliases:<20} parity {v.tags.get('modelyard.parity', 'missing'):<8} "
                  f"run {v.run_id}  data {v.tags.get('modelyard.data_digest', '')[:12]}  "
                  f"triton v{v.tags.get('modelyard.triton_version', '-')}")
    else:
        version = args.version if args.action == "promote" else None
        move = set_alias(args.name, args.alias, version, reason=args.reason, who=args.who,
                         tracking_uri=args.tracking_uri)
        print(f"{args.name}: {move.alias} {move.from_version or '-'} -> {move.to_version or '-'}")
    return 0
