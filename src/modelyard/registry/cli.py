"""``modelyard registry``: versions, audited alias moves and their history."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from jsonargparse import ArgumentParser, Namespace

from modelyard.environments import DEFAULT_FILES, ENV_VAR, FILE_VAR, describe, load_environments
from modelyard.registry.promote import promote_version
from modelyard.registry.store import ALIASES, history, set_alias
from modelyard.safety import check_name
from modelyard.tracking import client_for, resolve_tracking_uri

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

# name -> one-line summary
SUBCOMMANDS = {
    "show": "versions of a model with their aliases, parity and lineage tags",
    "history": "every alias move of a model: who, when, alias, from, to, reason",
    "promote": "point an alias at a version (refused unless its parity gate passed); with --from/--to, copy "
               "a version from one environment's registry to another's",
    "demote": "remove an alias",
    "environments": "the named environments (configs/environments.yaml) and their registries",
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
        if action == "environments":
            commands.add_subcommand(action, sub, help=summary)
            continue
        sub.add_argument("name", type=str | None, nargs="?", default=None, help="the registered model name")
        sub.add_argument("--model", type=str | None, default=None, help="the registered model name (or give it first)")
        if action == "promote":
            sub.add_argument("--version", type=str, required=True, help="the model version to promote")
            sub.add_argument("--from", dest="from_env", type=str | None, default=None,
                             help="copy the version from this environment's registry (with --to)")
            sub.add_argument("--to", dest="to_env", type=str | None, default=None,
                             help="into this environment's registry: files, card, parity, digest and lineage, "
                                  "audited in both; refused without passed parity, checksum or card")
        if action in ("promote", "demote"):
            sub.add_argument("--alias", type=Literal[ALIASES] | None, default=None,
                             help="the alias to move (default champion; with --to: none unless given)")
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
    if action == "environments":
        return _environments()
    args.name = _model_name(args)
    if action == "promote" and (args.from_env or args.to_env):
        return _promote_between(args)
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
        move = set_alias(args.name, args.alias or "champion", version, reason=args.reason, who=args.who,
                         tracking_uri=args.tracking_uri)
        print(f"{args.name}: {move.alias} {move.from_version or '-'} -> {move.to_version or '-'}")
    return 0


def _model_name(args: Namespace) -> str:
    if args.name and args.model and args.name != args.model:
        raise ValueError(f"two model names given: {args.name!r} and --model {args.model!r}; give one")
    name = args.name or args.model
    if not name:
        raise ValueError(f"modelyard registry {args.action}: which model? give its name (or --model NAME)")
    return name


def _environments() -> int:
    envs = load_environments()
    if envs is None:
        print(f"no environments file ({' or '.join(DEFAULT_FILES)}, or ${FILE_VAR}); every command uses "
              "$MLFLOW_TRACKING_URI, else ./mlflow.db")
        return 0
    print(f"environments of {envs.source} (select one with `modelyard --env NAME ...` or ${ENV_VAR}):")
    for row in describe(envs):
        mark = "*" if row["selected"] else " "
        rules = []
        if row["promote_from"]:
            rules.append(f"promoted from {', '.join(row['promote_from'])}")
        if row["promote_only"]:
            rules.append("promotion only")
        print(f"{mark} {row['name']:<10} {row['tracking_uri']}" + (f"  ({'; '.join(rules)})" if rules else ""))
    return 0


def _promote_between(args: Namespace) -> int:
    if not (args.from_env and args.to_env):
        raise ValueError("a promotion between environments needs both --from and --to")
    if args.tracking_uri:
        raise ValueError("--tracking_uri does not apply with --from/--to: each environment names its own registry")
    envs = load_environments()
    if envs is None:
        raise ValueError(f"--from/--to name environments, but there is no environments file "
                         f"({' or '.join(DEFAULT_FILES)}, or ${FILE_VAR})")
    promotion = promote_version(args.name, args.version, envs.get(args.from_env), envs.get(args.to_env),
                                reason=args.reason, who=args.who, alias=args.alias)
    print(promotion.line())
    return 0
