"""The ``placement`` command line: a thin shell over the library.

Each command lives in its own module and registers itself on :data:`main` when imported; the
table below names the module of every command so that only the command that runs is imported
(``placement --help`` imports none, and so none of torch, OR-Tools or matplotlib). A new command
is a module plus one line here (or an import, which loads it eagerly). Pure ``format_*``
functions turn results into text, and the commands only print.
"""

from placement.cli._app import main

for _name, _module, _help in (
    ("capture", "capture_cmd", "Record routing from a local Hugging Face MoE model."),
    ("compare", "compare_cmd", "Compare plans with baselines on held-out traces."),
    ("demo", "demo_cmd", "Run the whole pipeline on a bundled trace."),
    ("diff", "diff_cmd", "Expert weights that move between two plans."),
    ("export", "engines_cmd", "Write a plan as an engine placement file."),
    ("import", "engines_cmd", "Read a deployed engine placement file into a plan."),
    ("replan", "replan_cmd", "Re-plan within a budget of expert weights moved."),
    ("show", "show_cmd", "What a plan or an engine placement file holds."),
    ("simulate", "simulate_cmd", "Periodic EPLB vs a static plan vs budgeted re-plans."),
    ("solve", "solve_cmd", "Plan expert placement from traces."),
    ("sweep", "sweep_cmd", "Sweep redundant experts and cluster shapes: tokens/s and $."),
    ("trace", "trace_cmd", "Inspect, synthesize and convert routing traces."),
    ("validate", "validate_cmd", "Replay a held-out trace against a plan."),
):
    main.add_lazy(_name, f"placement.cli.{_module}", _help)

__all__ = ["main"]
