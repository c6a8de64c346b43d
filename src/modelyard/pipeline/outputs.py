"""Copy values of a stage's ``--output_json`` result into the files an orchestrator reads.

A Kubeflow container component returns an output parameter by writing its value to a file whose
path the backend chooses (``{{$.outputs.parameters['run_id'].output_file}}``); the stage commands
write one JSON result (``modelyard train --output_json PATH``). This module is the step between:

    python -m modelyard.pipeline.outputs RESULT.json run_id=/tmp/outputs/run_id/data --expect status=finished

Each ``KEY=PATH`` writes the result's ``KEY`` as plain text to ``PATH`` (parent folders created; ``-``
prints it). ``--expect KEY=VALUE`` fails unless the result holds that value (a preempted training
job exits 0 but has no finished run to export). Exit status: 0 written, 1 a key missing or empty or
an expectation not met (nothing written), 2 bad usage. Only the standard library: it runs in the
image beside the stage commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["OutputsError", "main", "write_outputs"]


class OutputsError(ValueError):
    """A key the orchestrator needs is missing from a result, or the result is not the one expected."""


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def write_outputs(result: dict[str, Any], targets: dict[str, str], expect: dict[str, str] | None = None) -> None:
    """Write ``result[key]`` to each ``targets[key]`` path (``-``: stdout) after checking ``expect``.

    Raises:
        OutputsError: naming every missing or empty key and every unmet expectation; nothing is written then.
    """
    if not isinstance(result, dict):
        raise OutputsError(f"expected a JSON object, got {type(result).__name__}")
    problems = [f"{key} is {_text(result.get(key))!r}, expected {value!r}"
                for key, value in (expect or {}).items() if _text(result.get(key)) != value]
    problems += [f"{key} is missing or empty (the result has: {', '.join(sorted(result)) or 'nothing'})"
                 for key in targets if result.get(key) in (None, "")]
    if problems:
        raise OutputsError("; ".join(problems))
    for key, path in targets.items():
        if path == "-":
            print(_text(result[key]))
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(_text(result[key]))


def _pairs(items: Sequence[str], what: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise argparse.ArgumentTypeError(f"{what} must be KEY=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelyard.pipeline.outputs",
                                     description="Write values of a stage's --output_json result to output files.")
    parser.add_argument("result", help="the JSON file a stage wrote with --output_json")
    parser.add_argument("targets", nargs="+", metavar="KEY=PATH", help="write the result's KEY to PATH (- prints it)")
    parser.add_argument("--expect", action="append", default=[], metavar="KEY=VALUE",
                        help="fail unless the result's KEY is VALUE (repeatable)")
    args = parser.parse_args(argv)
    try:
        targets, expect = _pairs(args.targets, "a target"), _pairs(args.expect, "--expect")
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    try:
        result = json.loads(Path(args.result).read_text())
        write_outputs(result, targets, expect)
    except (OSError, ValueError) as err:  # OutputsError, an unreadable or non-JSON result
        print(f"{parser.prog}: {args.result}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
