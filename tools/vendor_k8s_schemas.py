"""Write the Kubernetes schemas ``modelyard deploy`` validates its manifests against (not installed).

Kubernetes publishes one OpenAPI v3 document per API group version (``api/openapi-spec/v3/`` of
kubernetes/kubernetes, per release branch). Those documents are large (the core group alone is about
2 MB); the manifests need a few objects. This tool keeps the schemas of the named kinds and every
schema they reference, drops the ``description`` texts, and writes them as one OpenAPI-style
document (``{"components": {"schemas": ...}}``, references unchanged), recording where they came from.

    python tools/vendor_k8s_schemas.py --version 1.33 \\
        --source apps/v1=PATH/apis__apps__v1_openapi.json --source core/v1=PATH/api__v1_openapi.json \\
        --origin "..." --out src/modelyard/deploy/schemas/kubernetes-1.33.json

src/modelyard/deploy/schemas/SOURCES.md says which files were used.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

KINDS = ("io.k8s.api.apps.v1.Deployment", "io.k8s.api.core.v1.Service")
REF_PREFIX = "#/components/schemas/"


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"].removeprefix(REF_PREFIX)} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def _strip_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_strip_descriptions(v) for v in node]
    return node


def closure(schemas: dict[str, Any], roots: tuple[str, ...]) -> dict[str, Any]:
    """The schemas of ``roots`` and of everything they reference, transitively."""
    keep: dict[str, Any] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep[name] = schemas[name]
        todo += sorted(_refs(schemas[name]) - keep.keys())
    return dict(sorted(keep.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", required=True, help="Kubernetes minor version, e.g. 1.33")
    parser.add_argument("--source", action="append", required=True, help="GROUP/VERSION=PATH of an OpenAPI v3 file")
    parser.add_argument("--origin", required=True, help="where the source files come from (repository, path, commit)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    schemas: dict[str, Any] = {}
    sources = {}
    for item in args.source:
        group, _, path = item.partition("=")
        data = Path(path).read_bytes()
        sources[group] = hashlib.sha256(data).hexdigest()
        schemas.update(json.loads(data)["components"]["schemas"])
    kept = _strip_descriptions(closure(schemas, KINDS))
    document = {"x-modelyard-source": {"kubernetes": args.version, "origin": args.origin, "sha256": sources,
                                       "kinds": list(KINDS), "note": "descriptions removed"},
                "components": {"schemas": kept}}
    Path(args.out).write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    print(f"{args.out}: {len(kept)} schemas for {', '.join(KINDS)}")


if __name__ == "__main__":
    main()
