"""Routing traces: the :class:`Trace` model, readers, writers, synthesis and capture."""

from placement.routing_traces.native import read_native, write_native
from placement.routing_traces.readers import (
    bundled_trace_path,
    bundled_traces,
    combine_windows,
    load_trace,
)
from placement.routing_traces.stats import (
    TraceStats,
    describe_trace,
    format_trace_stats,
    inspect_trace,
)
from placement.routing_traces.synth import PRESETS as SYNTH_PRESETS
from placement.routing_traces.synth import SynthConfig, synthesize
from placement.routing_traces.trace import Trace

__all__ = [
    "SYNTH_PRESETS",
    "SynthConfig",
    "Trace",
    "TraceStats",
    "bundled_trace_path",
    "bundled_traces",
    "combine_windows",
    "describe_trace",
    "format_trace_stats",
    "inspect_trace",
    "load_trace",
    "read_native",
    "synthesize",
    "write_native",
]
