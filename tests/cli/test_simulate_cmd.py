"""``placement simulate``: exit codes, lines, JSON and one-line errors."""

from __future__ import annotations

import json

import pytest

from placement.routing_traces import synthesize, write_native

CLUSTER = ("--nodes", "2", "--gpus-per-node", "4", "--slots-per-gpu", "9")




@pytest.fixture(scope="module")
def trace_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("sim") / "t.npz"
    write_native(synthesize("olmoe", num_tokens=6 * 256, num_windows=6, num_source_ranks=8,
                            num_layers=1, drift=1.0, seed=2), path)
    return str(path)


def test_text_and_json(run, trace_file: str) -> None:
    r = run("simulate", trace_file, "--every", "2", "--warmup", "2", "--max-moves", "4",
             *CLUSTER, "--jobs", "1")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[:3] == [
        f"{trace_file}: 6 windows on 2 node(s) x 4 GPU(s), 9 slot(s)/GPU = 72 slots per layer",
        "plans made from windows 0-1, judged on windows 2-5 (4); re-plans every 2 window(s)",
        "figures per window (imbalance (static), the plan in force), then over windows: mean, "
        "and worst window per layer (mean over layers)",
    ]
    assert [x.split("  ")[0] for x in lines[4:7]] == [
        "EPLB every 2 window(s) (last 2)", "static optimizer plan (first 2 windows)",
        "replan every 2 window(s), <= 4 moves (last 2)"]
    d = json.loads(run("simulate", trace_file, "--every", "2", "--warmup", "2", "--max-moves",
                        "4", *CLUSTER, "--jobs", "1", "--json", "--policies",
                        "static,replan").stdout)
    assert [p["policy"] for p in d["policies"]] == ["static", "replan"]
    assert d["policies"][1]["moves"] <= 4 * d["policies"][1]["replans"]


@pytest.mark.parametrize(("args", "line"), [
    (("--every", "0"), "error: Expected every >= 1 (an integer), got 0."),
    (("--max-moves", "-1"), "error: Expected max_moves >= 0 (an integer), got -1."),
    (("--policies", "eplb,magic"), "error: Expected policies among eplb, static, replan, got "
     "eplb, magic."),
    (("--warmup", "6"), "error: the trace has 6 window(s): too few to plan from 6 and judge on "
     "the rest (it needs at least warmup + 1; use --warmup or a trace with more windows)."),
])
def test_user_mistakes(run, error, trace_file: str, args: tuple[str, ...], line: str) -> None:
    error(run("simulate", trace_file, *CLUSTER, *args), line)


def test_cluster_is_needed(run, error, trace_file: str) -> None:
    error(run("simulate", trace_file),
          "error: Cluster not fully given: missing --nodes, --gpus-per-node, --slots-per-gpu "
          "(or use --cluster/--preset).")
