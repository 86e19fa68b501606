"""A newcomer's mistakes: each gets one line that names the file and says what to do, exit
status 1 (2 for a misspelt option), no traceback. Exact lines, so a worse wording fails here."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from placement.cluster import Cluster
from placement.engines import export_plan
from placement.routing_traces import Trace, load_trace, synthesize, write_native
from placement.solver import SolveOptions, solve


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A 4-window token trace, a plan made from its first half (as placement solve records
    it), the plan as every engine file, and a few other kinds of file."""
    d = tmp_path_factory.mktemp("mistakes")
    trace = synthesize("olmoe", num_tokens=256, num_windows=4, num_source_ranks=8,
                       num_layers=2, seed=1)
    write_native(trace, d / "t.npz")
    res = solve(trace.select_windows([0, 1]), Cluster(2, 4, 10), SolveOptions(method="eplb"))
    plan = dataclasses.replace(res.plan, settings={**res.plan.settings,
                                                   "inputs": [f"{d / 't.npz'}#first-half"]})
    plan.save(d / "plan.json")
    for fmt, name in (("trtllm", "lb.yaml"), ("sglang", "s.json"), ("vllm-ascend", "va.json"),
                      ("eplb", "e.pt")):
        export_plan(plan, fmt, d / name, fill_missing="trivial")
    (d / "cluster.toml").write_text("num_nodes = 2\ngpus_per_node = 4\nslots_per_gpu = 10\n")
    rates = np.array([[[0.7, 0.5, 0.500004, 0.3]], [[0.9, 0.6, 0.3, 0.2]]])
    write_native(Trace(num_experts=4, counts=rates, model="toy"), d / "rates.npz")
    # SGLang's logical_count file (the shape of its expert-distribution recorder's output)
    lc = np.random.default_rng(0).integers(0, 1000, size=(4, 16)) * 8
    (d / "logical_count.json").write_text(json.dumps({"logical_count": lc.tolist()}))
    out = {p.name: str(p) for p in d.iterdir()}
    out["dir"] = str(d)
    return out


# -------------------------------------------------------------------------------------------
# the cluster flags
# -------------------------------------------------------------------------------------------
def test_missing_cluster_flag_names_the_real_flag(files, run, error) -> None:
    t = files["t.npz"]
    error(run("solve", t, "--gpus-per-node", 4, "--slots-per-gpu", 10, "-o", "x.json"),
          "error: Cluster not fully given: missing --nodes (or use --cluster/--preset).")
    error(run("compare", f"{t}#second-half", "--gpus-per-node", 4, "--slots-per-gpu", 10,
              "--baseline", "contiguous", "-o", Path(files["dir"]) / "r"),
          "error: Cluster not fully given: missing --nodes (or use --cluster/--preset).")


@pytest.mark.parametrize("command", ["solve", "compare"])
def test_num_nodes_is_nodes(files, run, error, command) -> None:
    error(run(command, files["t.npz"], "--num-nodes", 2, "-o", "x"),
          f"error: no such option --num-nodes: did you mean --nodes? (see 'placement "
          f"{command} --help')", code=2)


# -------------------------------------------------------------------------------------------
# arguments swapped, files of the wrong kind
# -------------------------------------------------------------------------------------------
def test_validate_arguments_swapped(files, run, error) -> None:
    t, p = f"{files['t.npz']}#second-half", files["plan.json"]
    error(run("validate", t, p),
          f"error: {t} is a routing trace (native .npz) and {p} a placement plan: the plan "
          f"comes first: placement validate {p} {t}")


@pytest.mark.parametrize(("command", "tail"), [
    (("validate", "{plan}", "{plan}"), ()),
    (("solve", "{plan}"), ("--preset", "h100-2x8", "-o", "x.json")),
    (("trace", "inspect", "{plan}"), ()),
    (("compare", "{plan}", "{plan}"), ("-o", "r")),
])
def test_a_plan_where_a_trace_was_expected(files, run, error, command, tail) -> None:
    p = files["plan.json"]
    args = [a.format(plan=p) for a in command]
    r = run(*args, *tail)
    if command[0] == "compare":  # told by content: plans only, no trace
        error(r, "error: no held-out trace given (every argument is a plan file).")
        return
    error(r, f"error: {p}: a placement plan, not a routing trace: judge a plan on a trace "
             f"with placement validate {p} TRACE.")


@pytest.mark.parametrize("command", [("export", "--format", "sglang", "-o", "x.json"),
                                     ("validate", "{trace}")])
def test_a_trace_where_a_plan_was_expected(files, run, error, command) -> None:
    t = files["t.npz"]
    r = run(command[0], t, *[a.format(trace=t) for a in command[1:]])
    if command[0] == "validate":  # both arguments traces: not swapped, the first is wrong
        error(r, f"error: {t}: a routing trace (native .npz), not a placement plan: make a "
                 f"plan from it with placement solve {t} --preset NAME -o plan.json.")
        return
    error(r, f"error: {t}: a routing trace (native .npz), not a placement plan: make a plan "
             f"from it with placement solve {t} --preset NAME -o plan.json.")


ENGINE_LABELS = {
    "lb.yaml": "a TensorRT-LLM load-balancer config (moe_config.load_balancer)",
    "s.json": "an SGLang placement file (physical_to_logical_map)",
    "va.json": "a vLLM-Ascend expert map (expert_map_path)",
    "e.pt": "EPLB tensors (phy2log, log2phy, logcnt)",
}


@pytest.mark.parametrize("name", sorted(ENGINE_LABELS))
def test_an_engine_file_where_a_plan_was_expected(files, run, error, name) -> None:
    f, t = files[name], f"{files['t.npz']}#second-half"
    want = (f"error: {f}: {ENGINE_LABELS[name]}, not a placement plan: turn it into one with "
            f"placement import {f} --preset NAME -o plan.json.")
    error(run("validate", f, t), want)
    error(run("export", f, "--format", "sglang", "-o", "x.json"), want)
    error(run("compare", t, f, "-o", Path(files["dir"]) / "r"), want)


@pytest.mark.parametrize("name", sorted(ENGINE_LABELS))
def test_an_engine_file_where_a_trace_was_expected(files, run, error, name) -> None:
    f = files[name]
    want = (f"error: {f}: {ENGINE_LABELS[name]}, not a routing trace: to judge the placement "
            f"it holds, turn it into a plan with placement import {f} --preset NAME -o "
            "plan.json.")
    error(run("trace", "inspect", f), want)
    error(run("solve", f, "--preset", "h100-2x8", "-o", "x.json"), want)
    error(run("validate", files["plan.json"], f), want)


def test_import_of_a_trace_or_a_plan(files, run, error) -> None:
    t, p = files["t.npz"], files["plan.json"]
    error(run("import", t, "--nodes", 2, "-o", "x.json"),
          f"error: {t}: a routing trace (native .npz), not an engine placement file: make a "
          f"plan from it with placement solve {t} --preset NAME -o plan.json, then placement "
          "export the plan.")
    error(run("import", p, "--nodes", 2, "-o", "x.json"),
          f"error: {p}: a placement plan, not an engine placement file: it is already a "
          "placement plan: validate, compare or export it as it is.")


def test_a_cluster_file_where_a_trace_was_expected(files, run, error) -> None:
    c = files["cluster.toml"]
    error(run("trace", "inspect", c),
          f"error: {c}: a cluster file (TOML), not a routing trace: give it as --cluster {c}.")


# -------------------------------------------------------------------------------------------
# held-out windows that are planning windows
# -------------------------------------------------------------------------------------------
def test_heldout_overlapping_the_planning_windows(files, run, error) -> None:
    t, p = files["t.npz"], files["plan.json"]
    error(run("validate", p, t),
          f"error: {t}: windows w0, w1 of this trace are data {p} was made from (its input "
          "t.npz#first-half): judge the plan on other windows (e.g. "
          f"{t}#2-3), or pass --allow-overlap for in-sample figures.")
    error(run("validate", p, f"{t}#1-2"),
          f"error: {t}#1-2: window w1 of this trace is data {p} was made from (its input "
          f"t.npz#first-half): judge the plan on other windows (e.g. {t}#2-3), or pass "
          "--allow-overlap for in-sample figures.")
    error(run("compare", t, p, "-o", Path(files["dir"]) / "r"),
          f"error: {t}: windows w0, w1 of this trace are data {p} was made from (its input "
          "t.npz#first-half): judge the plan on other windows (e.g. "
          f"{t}#2-3), or pass --allow-overlap for in-sample figures.")
    r = run("validate", p, f"{t}#second-half")
    assert r.exit_code == 0, r.output
    r = run("validate", p, t, "--allow-overlap")
    assert r.exit_code == 0, r.output
    assert (f"note: {t}: windows w0, w1 of this trace are data {p} was made from (in-sample "
            "figures, for diagnosis only).") in r.stdout.splitlines()


def test_heldout_from_the_planning_directory(tmp_path, run, error) -> None:
    """A plan made from one file of a directory; the directory given as held-out."""
    t = synthesize("mixtral", num_tokens=64, num_layers=2, seed=3)
    (tmp_path / "d").mkdir()
    write_native(t, tmp_path / "d" / "a.npz")
    write_native(synthesize("mixtral", num_tokens=64, num_layers=2, seed=4), tmp_path / "d" /
                 "b.npz")
    res = solve(t, Cluster(1, 2, 4), SolveOptions(method="eplb"))
    plan = dataclasses.replace(res.plan, settings={"inputs": [str(tmp_path / "d" / "a.npz")]})
    plan.save(tmp_path / "p.json")
    d, p = str(tmp_path / "d"), str(tmp_path / "p.json")
    error(run("validate", p, d),
          f"error: {d}: window a of this trace is data {p} was made from (its input a.npz): "
          f"judge the plan on other windows (e.g. {d}#1), or pass --allow-overlap for "
          "in-sample figures.")
    assert run("validate", p, f"{d}#b").exit_code == 0


# -------------------------------------------------------------------------------------------
# a model shape that contradicts the plan or trace
# -------------------------------------------------------------------------------------------
def test_model_that_contradicts_the_plan(files, run, error) -> None:
    t, p = f"{files['t.npz']}#second-half", files["plan.json"]
    want = (f"error: --model mixtral-8x7b has 8 experts per layer but {p} has 64: choose the "
            "model the plan and trace are for (models that fit: olmoe-1b-7b).")
    error(run("validate", p, t, "--model", "mixtral-8x7b"), want)
    error(run("compare", t, p, "--model", "mixtral-8x7b", "-o", Path(files["dir"]) / "r"), want)
    # same experts, other top-k: DeepSeek-MoE-16B routes to 6
    error(run("validate", p, t, "--model", "deepseek-moe-16b"),
          f"error: --model deepseek-moe-16b routes each token to 6 experts but {t} to 8: choose "
          "the model the plan and trace are for (models that fit: olmoe-1b-7b).")


# -------------------------------------------------------------------------------------------
# export: file endings, layers the source trace knew
# -------------------------------------------------------------------------------------------
def test_trtllm_json_is_json_and_reads_like_the_yaml(files, run, tmp_path) -> None:
    out = tmp_path / "m.json"
    r = run("export", files["plan.json"], "--format", "trtllm", "--fill-missing", "trivial",
            "-o", out)
    assert r.exit_code == 0, r.output
    assert ("note: written as JSON, which TensorRT-LLM reads like YAML (yaml.safe_load)"
            in r.stdout.splitlines())
    data = json.loads(out.read_text())
    assert yaml.safe_load(out.read_text()) == data  # what TensorRT-LLM's loader sees
    want = yaml.safe_load(Path(files["lb.yaml"]).read_text())
    assert {int(k): v for k, v in data["initial_global_assignments"].items()} == \
        want["initial_global_assignments"]
    assert data["num_slots"] == want["num_slots"] and data["layer_updates_per_iter"] == 0


@pytest.mark.parametrize(("fmt", "name", "line"), [
    ("trtllm", "m.txt", "--format trtllm needs a file ending in .yaml, .yml or .json (.json "
                        "writes JSON, the others YAML; TensorRT-LLM reads both)."),
    ("vllm-ascend", "m.yaml", "--format vllm-ascend needs a file ending in .json (vLLM-Ascend "
                              "reads it with json.load)."),
    ("eplb", "m.json", "--format eplb needs a file ending in .pt or .npz."),
])
def test_export_file_endings(files, run, error, tmp_path, fmt, name, line) -> None:
    out = tmp_path / name
    error(run("export", files["plan.json"], "--format", fmt, "-o", out), f"error: {out}: {line}")
    assert not out.exists()


def test_sglang_export_takes_the_layers_of_the_traced_model(run, tmp_path) -> None:
    """FLAME-MoE's trace names its model and traces all 8 of its MoE layers (2-9) but does not
    count the dense ones: the preset does (10 decoder layers)."""
    trace = load_trace("bundled:flame-moe")
    plan = solve(trace, Cluster(2, 4, 10), SolveOptions(method="eplb")).plan
    plan.save(tmp_path / "flame.json")
    r = run("export", tmp_path / "flame.json", "--format", "sglang", "-o", tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[:2] == [
        f"wrote {tmp_path / 's.json'}: SGLang physical_to_logical_map, 10 rows (decoder layers) "
        "x 80 slots",
        "note: the model has 10 decoder layers (model preset flame-moe-290m, from the plan's "
        "model name 'FLAME-MoE-290M'; pass --num-hidden-layers to say otherwise)",
    ]
    rows = json.loads((tmp_path / "s.json").read_text())["physical_to_logical_map"]
    assert len(rows) == 10 and rows[2:] == plan.phy2log.tolist()


# -------------------------------------------------------------------------------------------
# inspect: whole assignments, top-k of counts
# -------------------------------------------------------------------------------------------
def test_inspect_activation_rates_and_top_k(files, run, sglang_counts_dir) -> None:
    r = run("trace", "inspect", files["rates.npz"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[2] == ("routing       aggregated activation rates (shares of tokens), top-2 "
                        "(each window and layer sums to 2)")
    assert lines[7] == "assignments   4 (all layers)"
    # 16 experts: no model to guess from, so the top-k is asked for
    r = run("trace", "inspect", files["logical_count.json"])
    assert r.stdout.splitlines()[2] == \
        "routing       aggregated counts, top-k unknown (give --top-k K)"
    r = run("trace", "inspect", files["logical_count.json"], "--top-k", 8)
    assert r.stdout.splitlines()[2] == "routing       aggregated counts, top-8 (--top-k)"
    # SGLang's DeepSeek-V3 dump (256 experts, no model named): the model and top-k solve guesses
    r = run("trace", "inspect", sglang_counts_dir / "w0.json")
    assert r.stdout.splitlines()[1:3] == [
        "model         deepseek-v3 (guessed from 256 experts per layer)",
        "routing       aggregated counts, top-8 (model deepseek-v3, guessed from 256 experts)"]


def test_heldout_of_a_bundled_trace(tmp_path, run, error) -> None:
    plan = solve(load_trace("bundled:mixtral#0"), Cluster(1, 2, 4), SolveOptions(method="eplb")).plan
    plan = dataclasses.replace(plan, settings={"inputs": ["bundled:mixtral#0"]})
    plan.save(tmp_path / "p.json")
    p = str(tmp_path / "p.json")
    error(run("validate", p, "bundled:mixtral"),
          f"error: bundled:mixtral: window w0 of this trace is data {p} was made from (its input "
          "bundled:mixtral#0): judge the plan on other windows (e.g. bundled:mixtral#1), or pass "
          "--allow-overlap for in-sample figures.")
    assert run("validate", p, "bundled:mixtral#1").exit_code == 0


# -------------------------------------------------------------------------------------------
# the rough edges of issue 19
# -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("command", "writes"), [
    ("compare", "report.md, report.html and the figures"),
    ("sweep", "sweep.md, sweep.json, the figures and the best plan"),
])
def test_output_directory_named_like_a_file(files, run, error, tmp_path, command,
                                            writes) -> None:
    out = tmp_path / "report.html"
    error(run(command, f"{files['t.npz']}#second-half", files["plan.json"], "-o", out),
          f"error: -o {out} names a file, but {command} writes a directory ({writes}): give a "
          f"directory, e.g. -o {tmp_path / 'report'} (see 'placement {command} --help').",
          code=2)
    assert not out.exists()


_MODEL_COMMANDS = ["solve", "sweep", "validate", "compare", "diff", "replan", "import"]


@pytest.mark.parametrize("command", _MODEL_COMMANDS)
def test_model_means_one_thing_in_every_command(run, error, command) -> None:
    """``--model NAME`` is a model preset everywhere (solve's free text, validate's choice list
    and import's name to record were three things): one help wording, one error line."""
    help_text = " ".join(run(command, "--help").stdout.split())
    assert "--model NAME The model, a preset (deepseek-moe-16b, deepseek-v3, " in help_text
    error(run(command, "x", "y", "--model", "gpt"),
          "error: Unknown model 'gpt'; choose one of: deepseek-moe-16b, deepseek-v3, "
          "flame-moe-290m, kimi-k2, mixtral-8x7b, olmoe-1b-7b, qwen1.5-moe-a2.7b, "
          "qwen3-235b-a22b, qwen3-30b-a3b.")


@pytest.mark.parametrize("command", ["export", "import"])
def test_format_vllm_says_what_to_use(files, run, error, command) -> None:
    error(run(command, files["plan.json"], "--format", "vllm", "-o", "x.json"),
          "error: --format vllm: upstream vLLM loads no static expert placement file (its "
          "--enable-eplb rebalances online with EPLB's algorithm): serve the plan with SGLang "
          "(--format sglang) or TensorRT-LLM (--format trtllm), on Ascend NPUs with vLLM-Ascend "
          "(--format vllm-ascend), or judge vLLM's online EPLB against the plan with placement "
          "compare --baseline eplb.")


def test_window_name_typo_gets_did_you_mean(files, run, error) -> None:
    t = files["t.npz"]
    error(run("validate", files["plan.json"], f"{t}#secnd-half"),
          f"error: {t}: Unknown window 'secnd-half' in 'secnd-half' (did you mean "
          "'second-half'?): give an index, a range, first-half, second-half, even, odd or one "
          "of the trace's window names.")


def test_cluster_file_key_typo_names_the_key(files, run, error, tmp_path) -> None:
    bad = tmp_path / "c.toml"
    bad.write_text("nodes = 2\ngpus_per_node = 4\nslots_per_gpu = 10\n")
    error(run("solve", files["t.npz"], "--cluster", bad, "-o", tmp_path / "p.json"),
          f"error: {bad}: Unknown cluster setting 'nodes': did you mean num_nodes? (settings: "
          "gpu, gpu_tflops, gpus_per_node, memory, name, network_gbps, num_nodes, nvlink_gbps, "
          "slots_per_gpu, usd_per_gpu_hour).")


def test_replan_without_a_budget_names_the_flags(files, run, error, tmp_path) -> None:
    error(run("replan", files["plan.json"], files["t.npz"], "-o", tmp_path / "r.json"),
          "error: give the budget as exactly one of --max-moves N or --max-bytes B "
          "(--max-moves 0 keeps the deployed plan) (see 'placement replan --help').", code=2)


@pytest.mark.parametrize("command", ["solve", "replan", "compare", "sweep"])
def test_traces_of_two_models_name_both_files(files, run, error, tmp_path, command) -> None:
    other = tmp_path / "other.npz"
    write_native(synthesize("mixtral", num_tokens=64, num_windows=2, num_source_ranks=8,
                            num_layers=2, seed=0), other)
    t = files["t.npz"]
    args = {"solve": ("solve", t, other, "--nodes", 2, "--gpus-per-node", 4,
                      "--slots-per-gpu", 10, "-o", tmp_path / "p.json"),
            "replan": ("replan", files["plan.json"], t, other, "--max-moves", 1,
                       "-o", tmp_path / "p.json"),
            "compare": ("compare", f"{t}#second-half", other, files["plan.json"],
                        "--baseline", "contiguous", "-o", tmp_path / "r"),
            "sweep": ("sweep", f"{t}#first-half", "--heldout", other, "--nodes", 2,
                      "--model", "olmoe-1b-7b", "-o", tmp_path / "s")}[command]
    first = f"{t}#second-half" if command == "compare" else \
        f"{t}#first-half" if command == "sweep" else t
    error(run(*args), f"error: {other} has 8 experts per layer but {first} has 64: the "
                      "traces must be of one model.")


def test_trtllm_export_of_deepseek_v3_without_mtp_layers_warns(run, tmp_path) -> None:
    from placement.plan import Plan

    plan = Plan(cluster=Cluster(4, 8, 9), num_experts=256, layer_ids=np.arange(3, 61),
                phy2log=np.tile(np.arange(288) % 256, (58, 1)), method="eplb",
                model="deepseek-v3")
    plan.save(tmp_path / "plan.json")
    warn = ("warning: no --mtp-layers: deepseek-v3 has an MTP layer (61), and with MTP "
            "speculative decoding TensorRT-LLM fails at start-up without an assignment for it: "
            "export again with --mtp-layers 61 (without MTP, ignore this).")
    r = run("export", tmp_path / "plan.json", "--format", "trtllm", "-o", tmp_path / "lb.yaml")
    assert r.exit_code == 0, r.output
    assert r.stderr.splitlines()[0] == warn
    r = run("export", tmp_path / "plan.json", "--format", "trtllm", "--mtp-layers", 61,
            "-o", tmp_path / "lb.yaml")
    assert r.exit_code == 0 and warn not in r.stderr
    # a model without an MTP layer: no warning
    mix = Plan(cluster=Cluster(1, 2, 4), num_experts=8, layer_ids=np.arange(32),
               phy2log=np.tile(np.arange(8), (32, 1)), method="eplb", model="mixtral-8x7b")
    mix.save(tmp_path / "mix.json")
    r = run("export", tmp_path / "mix.json", "--format", "trtllm", "-o", tmp_path / "m.yaml")
    assert r.exit_code == 0 and "--mtp-layers" not in r.stderr
