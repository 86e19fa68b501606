"""``placement solve``: exit codes, exact lines, the plan file, errors."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner, Result

from placement.cli import main
from placement.plan import Plan
from placement.routing_traces import Trace, write_native


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _assert_one_line_error(result: Result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.output


@pytest.fixture
def counts_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    counts = np.rint(rng.dirichlet(np.full(8, 0.7), size=(2, 2)) * 10000)  # [W, L, E]
    t = Trace(num_experts=8, counts=counts, layer_ids=[1, 2], num_hidden_layers=3, model="toy")
    write_native(t, tmp_path / "counts.npz")
    return tmp_path / "counts.npz"


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    clique = rng.integers(2, size=600)
    ids = np.stack([rng.choice(4, size=2, replace=False) + 4 * c for c in clique])
    t = Trace(num_experts=8, topk_ids=ids[:, None, :], window=np.arange(600) // 300,
              model="toy")
    write_native(t, tmp_path / "tokens.npz")
    return tmp_path / "tokens.npz"


def test_solve_prints_the_summary_and_saves_the_plan(counts_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    r = _run("solve", str(counts_file), "--nodes", "2", "--gpus-per-node", "2",
             "--slots-per-gpu", "3", "--jobs", "1", "-o", str(out))
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == ("method optimizer: 2 layer(s) x 8 experts on 2 node(s) x 2 GPU(s), "
                        "3 slot(s)/GPU = 12 slots per layer")
    # the trace's model "toy" is unknown; 8 experts are only Mixtral's
    assert lines[1] == ("objective time (predicted MoE layer time); model mixtral-8x7b "
                        "(guessed), two-batch overlap")
    assert lines[2].startswith("status OPTIMAL, wall time ")
    # no GPU given: the default (H800) at the model's precision (Mixtral: BF16, 989 x 0.6)
    assert lines[3] == ("hardware of the predicted time: h800 593 TFLOP/s bf16, NVLink 160 GB/s, "
                        "network 40 GB/s (h800 peaks x DeepSeek's kernel shares: GEMM 0.6, "
                        "NVLink 0.8, NIC 0.8)")
    assert lines[4] == f"{'in-sample, mean over layers':<34}{'plan':>12}{'eplb':>12}{'ratio':>8}"
    assert lines[5].startswith("predicted MoE layer time (two-batch) ")
    assert lines[6].startswith("imbalance (even) ")
    assert lines[7].startswith("worst-window imbalance (even) ")
    assert lines[8].startswith("objective (predicted compute time of the worst window): ")
    assert lines[8].endswith(" x EPLB's, no layer worse")
    # the table's time is for all the planning tokens; the step's is stated beside it
    step = [ln for ln in lines if ln.startswith("predicted MoE layer time per step of 4,096 "
                                                 "tokens per GPU: ")]
    assert len(step) == 1 and step[0].endswith(" planning tokens per layer, a total)"), lines
    assert "fell back to EPLB's placement: 0 of 2 layer(s)" in lines
    gap = [ln for ln in lines if ln.startswith("lower bound of worst-window imbalance (even): ")]
    assert len(gap) == 1 and gap[0].endswith("on 2 of 2 layer(s); gap mean 0.00 %, max 0.00 %")
    assert lines[-1] == f"saved plan to {out}"
    assert "traffic unknown: the traces hold aggregated counts only" in r.stdout
    plan = Plan.load(out)
    assert plan.method == "optimizer" and plan.status == "OPTIMAL"
    assert plan.settings["inputs"] == [str(counts_file.resolve())]
    assert plan.layer_ids.tolist() == [1, 2] and plan.num_hidden_layers == 3


def test_solve_json_and_per_layer(counts_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    r = _run("solve", str(counts_file), "--nodes", "1", "--gpus-per-node", "4",
             "--slots-per-gpu", "3", "--method", "eplb", "--json", "-o", str(out))
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["method"] == "eplb" and data["output"] == str(out)
    assert data["per_layer"]["layer_ids"] == [1, 2]
    assert data["plan"]["imbalance_even"] >= 1.0
    assert data["reference"] == {} and data["predicted_time_ratio"] is None
    r = _run("solve", str(counts_file), "--nodes", "1", "--gpus-per-node", "4",
             "--slots-per-gpu", "3", "--json", "-o", str(out))
    data = json.loads(r.stdout)
    assert data["objective"] == "time" and data["model"] == "mixtral-8x7b"
    assert data["predicted_time_ratio"] > 0
    assert 0 < data["objective_ratio"] <= 1.0
    assert data["fell_back_layers"] == [] and data["time_limit_layers"] == []
    assert data["guard_fell_back_layers"] == []  # counts: the validation guard does not run
    assert set(data["plan"]) >= {"imbalance_even", "worst_window_imbalance_even",
                                 "predicted_moe_layer_time"}
    hw = data["hardware"]
    assert (hw["gpu"], hw["precision"], hw["nvlink_gbps"], hw["network_gbps"]) == (
        "h800", "bf16", 160.0, 40.0)
    assert hw["tflops"] == pytest.approx(989 * 0.6)
    assert hw["sources"]["tflops"] == "h800 BF16 peak 989 x GEMM 0.6"
    assert Plan.load(out).settings["hardware"] == hw  # the plan records what it was made for
    r = _run("solve", str(counts_file), "--nodes", "1", "--gpus-per-node", "4",
             "--slots-per-gpu", "3", "--per-layer", "-o", str(out))
    assert r.exit_code == 0, r.output
    assert any(line.startswith("  layer 1: ") for line in r.stdout.splitlines())
    assert any(line.startswith("  layer 2: ") for line in r.stdout.splitlines())


def test_solve_token_level_reports_traffic(tokens_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    r = _run("solve", str(tokens_file), "--nodes", "2", "--gpus-per-node", "2",
             "--slots-per-gpu", "3", "--objective", "traffic", "--balance-tolerance", "0.3",
             "-o", str(out))
    assert r.exit_code == 0, r.output
    row = [ln for ln in r.stdout.splitlines() if ln.startswith("cross-node sends per token")]
    assert len(row) == 1
    mine, eplb = (float(x) for x in row[0].split()[4:6])
    assert mine < eplb
    assert "objective traffic (cross-node sends)" in r.stdout
    assert "balance tolerance 0.3" in r.stdout
    assert "traffic unknown" not in r.stdout


def _figure(text: str, label: str) -> float:
    """The first number on the line of ``text`` that starts with ``label`` (any punctuation
    after it): the same figure under the same label in every command."""
    import re

    for line in text.splitlines():
        if line.startswith(label):
            m = re.search(r"[-+]?\d+\.\d+", line[len(label):])
            assert m is not None, line
            return float(m.group(0))
    raise AssertionError(f"no line starts with {label!r}:\n{text}")


@pytest.mark.parametrize("kind", ["tokens", "counts"])
def test_solve_and_validate_print_the_same_in_sample_figures(
        kind: str, tokens_file: Path, counts_file: Path, tmp_path: Path) -> None:
    trace = tokens_file if kind == "tokens" else counts_file
    out = tmp_path / "plan.json"
    r = _run("solve", str(trace), "--nodes", "2", "--gpus-per-node", "2", "--slots-per-gpu",
             "3", "--jobs", "1", "-o", str(out))
    assert r.exit_code == 0, r.output
    v = _run("validate", str(out), str(trace), "--allow-overlap")  # in-sample on purpose
    assert v.exit_code == 0, v.output
    # the same figure under the same label (figures.md)
    label = "imbalance (static)" if kind == "tokens" else "imbalance (even)"
    assert _figure(r.stdout, label) == pytest.approx(_figure(v.stdout, label), abs=1e-4)
    if kind == "tokens":
        for label in ("cross-node sends per token", "cross-node copies per token"):
            assert _figure(r.stdout, label) == pytest.approx(_figure(v.stdout, label), abs=1e-4)


def test_deepseek_files_with_a_preset(tmp_path: Path, deepseek_counts_dir: Path) -> None:
    files = [str(f) for f in sorted(deepseek_counts_dir.glob("*.json"))[:2]]
    out = tmp_path / "plan.json"
    r = _run("solve", *files, "--preset", "deepseek-decode", "-o", str(out))
    assert r.exit_code == 0, r.output
    plan = Plan.load(out)
    assert plan.phy2log.shape == (58, 288)
    assert plan.num_hidden_layers == 61
    assert plan.settings["inputs"] == [str(Path(f).resolve()) for f in files]


def test_too_few_slots(counts_file: Path, tmp_path: Path) -> None:
    r = _run("solve", str(counts_file), "--nodes", "1", "--gpus-per-node", "2",
             "--slots-per-gpu", "3", "-o", str(tmp_path / "p.json"))
    _assert_one_line_error(r, "has 6 slots per layer but the model has 8 experts: short by 2")
    assert not (tmp_path / "p.json").exists()


def test_missing_trace(tmp_path: Path) -> None:
    r = _run("solve", str(tmp_path / "nope.npz"), "--preset", "h100-2x8", "-o",
             str(tmp_path / "p.json"))
    _assert_one_line_error(r, "nope.npz")


def test_bad_method_is_a_usage_error(counts_file: Path, tmp_path: Path) -> None:
    r = _run("solve", str(counts_file), "--preset", "h100-2x8", "--method", "magic", "-o",
             str(tmp_path / "p.json"))
    assert r.exit_code == 2
    assert "Invalid value for '--method'" in r.output


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["--preset", "nope"], 1, "Unknown cluster preset 'nope'"),
        (["--nodes", "2"], 1, "Cluster not fully given"),
        (["--preset", "h100-2x8", "--robust", "min"], 2, "Invalid value for '--robust'"),
        (["--preset", "h100-2x8", "--time-limit", "0"], 2, "Invalid value for '--time-limit'"),
        (["--preset", "h100-2x8", "--jobs", "0"], 2, "Invalid value for '--jobs'"),
        (["--preset", "h100-2x8", "--objective", "speed"], 2, "Invalid value for '--objective'"),
        (["--preset", "h100-2x8", "--model", "gpt-9"], 1, "Unknown model 'gpt-9'; choose one of"),
        (["--preset", "h100-2x8", "--overlap", "full"], 2, "Invalid value for '--overlap'"),
    ],
)
def test_bad_options(counts_file: Path, tmp_path: Path, args: list[str], code: int,
                     fragment: str) -> None:
    r = _run("solve", str(counts_file), *args, "-o", str(tmp_path / "p.json"))
    assert r.exit_code == code, r.output
    assert fragment in r.output


def test_output_is_required(counts_file: Path) -> None:
    r = _run("solve", str(counts_file), "--preset", "h100-2x8")
    assert r.exit_code == 2
    assert "Missing option '-o'" in r.output


def test_time_limit_help_and_docs_agree() -> None:
    """One --time-limit: seconds for the whole solve, the library's default, in the help and in
    docs/solve.md alike."""
    import re

    from placement.solver import SolveOptions

    default = SolveOptions().time_limit
    text = " ".join(_run("solve", "--help").stdout.split())
    assert "--time-limit S Safety net, seconds for the whole solve (not per layer)" \
        in text
    assert f"[default: {default}; x>0.0]" in text
    docs = (Path(__file__).resolve().parents[2] / "docs" / "solve.md").read_text()
    row = re.search(r"^\| `--time-limit S` \|(.*)\|$", docs, re.M)
    assert row is not None
    assert f"seconds for the whole solve (default {default:g})" in row.group(1)


def test_help_groups_the_options_common_path_first() -> None:
    """``solve --help`` in sections (cluster and output first, where a new user looks), every
    option listed once, and short enough to read."""
    from placement.cli.solve_cmd import solve_cmd

    lines = _run("solve", "--help").stdout.splitlines()
    heads = [ln for ln in lines if ln.endswith(":") and not ln.startswith(" ")]
    assert heads == ["Cluster:", "Output:", "Objective:",
                     "Memory (slots per GPU from its memory):", "Search:", "Other options:"]
    assert lines.index("Output:") < 32
    options = [o for p in solve_cmd.params if isinstance(p, click.Option) for o in p.opts]
    listed = [w.rstrip(",") for ln in lines if ln.startswith("  -") for w in ln.split()
              if w.startswith("-") and w.rstrip(",") in options]
    assert sorted(listed) == sorted(options)  # each once (the help option included)
    assert len(lines) <= 105  # 112 before the sections
