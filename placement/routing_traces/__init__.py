"""Routing traces: the :class:`Trace` model, readers, writers, synthesis and capture."""

from placement.routing_traces.native import read_native, write_native
from placement.routing_traces.trace import Trace

__all__ = ["Trace", "read_native", "write_native"]
