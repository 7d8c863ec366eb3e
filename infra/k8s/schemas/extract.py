"""Write the openAPIV3Schema of CRDs as the JSON files of this directory.

    python infra/k8s/schemas/extract.py CRD.yaml... [--version NAME]

For each CustomResourceDefinition in the YAML files it writes ``<group>/<kind>_<version>.json``
(kind in lower case) beside this script: the schema of the storage version, or of ``--version``,
unchanged. README.md names the files this directory holds and where they came from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent


def crd_schemas(documents: list[dict[str, Any]], version: str | None) -> dict[Path, dict[str, Any]]:
    """{relative output path: openAPIV3Schema} of the CRDs among ``documents``."""
    out: dict[Path, dict[str, Any]] = {}
    for crd in documents:
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        versions = [v for v in spec["versions"] if (v["name"] == version if version else v.get("storage"))]
        if not versions:
            raise SystemExit(f"{crd['metadata']['name']}: no version {version or '(storage)'}")
        chosen = versions[0]
        kind = spec["names"]["kind"].lower()
        out[Path(spec["group"]) / f"{kind}_{chosen['name']}.json"] = chosen["schema"]["openAPIV3Schema"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("crds", nargs="+", type=Path)
    parser.add_argument("--version", help="the CRD version to take (default: the storage version)")
    args = parser.parse_args()
    for path in args.crds:
        documents = list(yaml.safe_load_all(path.read_text()))
        for relative, schema in crd_schemas(documents, args.version).items():
            target = HERE / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
            print(f"{path} -> {target.relative_to(HERE)} ({target.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
