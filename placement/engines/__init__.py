"""Serving engines in and out: plans to engine placement files and back.

    export_plan(plan, "sglang", "init_expert_location.json", num_hidden_layers=61)
    import_plan("moe_load_balancer.yaml", cluster).plan

Per-format pure builders return the in-memory object (``build_sglang``, ``build_trtllm``,
``build_eplb``, ``build_vllm_ascend``); readers return an :class:`EngineFile`. The formats are
a registry (:mod:`placement.engines.registry`): a new one is a module and one line there.
"""

from typing import Any

from placement.engines._common import (
    FILL_CHOICES,
    EngineFile,
    LayerLayout,
    format_ids,
    parse_layer_spec,
    resolve_layout,
    trivial_row,
)
from placement.engines.api import (
    ExportResult,
    ImportResult,
    complete_cluster,
    detect_format,
    engine_file_to_plan,
    export_plan,
    import_plan,
    read_engine_file,
)
from placement.engines.eplb import build_eplb
from placement.engines.registry import (
    EngineFormat,
    format_names,
    formats,
    get_format,
    register_format,
    unregister_format,
)
from placement.engines.sglang import build_sglang
from placement.engines.trtllm import build_trtllm, trtllm_default_row
from placement.engines.vllm_ascend import build_vllm_ascend

__all__ = [
    "FILL_CHOICES",
    "FORMATS",
    "EngineFile",
    "EngineFormat",
    "ExportResult",
    "ImportResult",
    "LayerLayout",
    "build_eplb",
    "build_sglang",
    "build_trtllm",
    "build_vllm_ascend",
    "complete_cluster",
    "detect_format",
    "engine_file_to_plan",
    "export_plan",
    "format_ids",
    "format_names",
    "formats",
    "get_format",
    "import_plan",
    "parse_layer_spec",
    "read_engine_file",
    "register_format",
    "resolve_layout",
    "trivial_row",
    "trtllm_default_row",
    "unregister_format",
]


def __getattr__(name: str) -> Any:
    """``FORMATS``: the names of the registered formats, read when asked (a format registered
    later is in it)."""
    if name == "FORMATS":
        return format_names()
    raise AttributeError(f"module 'placement.engines' has no attribute {name!r}")
