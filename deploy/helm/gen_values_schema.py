"""Generate the `config` part of the chart's values.schema.json from gemma-serving's own config model.

One schema: `properties.config` and `$defs` of deploy/helm/gemma-serving/values.schema.json are
`ServingConfig.model_json_schema()` (services/gemma_serving/config.py), tightened only where the chart needs it
(accelerator_type must name a GKE accelerator the chart can build a worker group for). The rest of the file is
hand-written. Run after changing config.py:

    .venv/bin/python deploy/helm/gen_values_schema.py          # rewrite
    .venv/bin/python deploy/helm/gen_values_schema.py --check  # exit 1 if stale (tests/chart runs this check)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).parent / "gemma-serving" / "values.schema.json"

#: GKE accelerator names (node label cloud.google.com/gke-accelerator) a worker group may be built for.
GKE_ACCELERATORS = [
    "nvidia-tesla-t4",
    "nvidia-l4",
    "nvidia-tesla-a100",
    "nvidia-a100-80gb",
    "nvidia-h100-80gb",
    "nvidia-h100-mega-80gb",
    "nvidia-h200-141gb",
    "nvidia-b200",
]


def config_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """(schema of `config`, its $defs) from ServingConfig."""
    from gemma_serving.config import ServingConfig

    schema = ServingConfig.model_json_schema()
    defs = schema.pop("$defs")
    accel = defs["DeploymentSettings"]["properties"]["accelerator_type"]
    accel["anyOf"] = [{"$ref": "#/$defs/GkeAccelerator"}, {"type": "null"}]
    defs["GkeAccelerator"] = {
        "enum": GKE_ACCELERATORS,
        "description": "GKE accelerator (cloud.google.com/gke-accelerator).",
    }
    # The chart serves from a cluster: the router must listen on every interface.
    schema["required"] = sorted(set(schema.get("required", [])) | {"router"})
    return schema, defs


def render(current: dict[str, Any]) -> dict[str, Any]:
    config, defs = config_schema()
    updated = dict(current)
    updated["properties"] = {**current["properties"], "config": config}
    updated["$defs"] = defs
    return updated


def dumps(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2) + "\n"


def main(argv: list[str]) -> int:
    current_text = SCHEMA_PATH.read_text(encoding="utf-8")
    wanted = dumps(render(json.loads(current_text)))
    if "--check" in argv:
        if wanted != current_text:
            print(f"{SCHEMA_PATH} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    SCHEMA_PATH.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
