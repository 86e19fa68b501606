"""A new engine format in one module: what a contributor writes (the registry line is the
``register_format(FORMAT)`` call the test makes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from placement._io import atomic_write_text
from placement.engines import EngineFile
from placement.engines._common import Built, ExportRequest, Usage, check_rows, int_rows
from placement.filekinds import FileKind, Probe
from placement.plan import Plan


class ToyFormat:
    """``{"toy_map": [[logical id of every slot] per planned layer], "layers": [ids]}``."""

    name = "toy"
    engine = "the Toy engine's --placement"
    suffixes = (".toy",)
    suffix_reason = ""
    options: frozenset[str] = frozenset()
    kind = FileKind("toy", "engine", "a Toy engine placement")

    def detect(self, probe: Probe) -> bool:
        return "toy_map" in probe.keys()

    def build(self, plan: Plan, request: ExportRequest, path: Path) -> Built:
        ids = tuple(plan.layer_ids.tolist())
        return Built(obj={"toy_map": plan.phy2log.tolist(), "layers": list(ids)},
                     description=f"Toy map, {plan.num_layers} layers", layer_ids=ids)

    def check(self, built: Built, plan: Plan) -> None:
        check_rows(np.asarray(built.obj["toy_map"]), plan.num_experts, plan.cluster.num_gpus,
                   built.layer_ids, "Toy map")

    def write(self, built: Built, path: Path) -> None:
        atomic_write_text(path, json.dumps(built.obj))

    def read(self, path: Path, container: str, data: Any, text: str) -> EngineFile:
        return EngineFile(path=path, fmt=self.name,
                          phy2log=int_rows(path, "toy_map", data["toy_map"]),
                          row_layer_ids=np.asarray(data["layers"], dtype=np.int64))

    def usage(self, plan: Plan, path: Path) -> Usage:
        return Usage(lines=(f"toy-serve --placement {path}",))


FORMAT = ToyFormat()
