"""``placement sweep``: exit codes, exact lines, the files, and user mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from placement.cli import main
from placement.plan import Plan
from placement.routing_traces import Trace, write_native


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _assert_one_line_error(result: Result, line: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert lines == [line], result.stderr
    assert "Traceback" not in result.output


def _counts(path: Path, seed: int, experts: int = 8, model: str = "Mixtral-8x7B-Instruct",
            top_k: int = 2) -> Path:
    rng = np.random.default_rng(seed)
    counts = np.rint(rng.dirichlet(np.full(experts, 2.0), size=(2, 2)) * 20000)
    write_native(Trace(num_experts=experts, counts=counts, layer_ids=[0, 1], num_hidden_layers=8,
                       top_k=top_k, model=model), path)
    return path


@pytest.fixture
def traces(tmp_path: Path) -> tuple[Path, Path]:
    return _counts(tmp_path / "a.npz", 0), _counts(tmp_path / "b.npz", 1)


ARGS = ("--redundant", "0,2,4", "--nodes", "1,2", "--gpus-per-node", "2", "--context", "1024",
        "--methods", "eplb", "--time-limit", "5")


def test_sweep_prints_the_table_and_writes_the_files(traces: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    a, b = traces
    out = tmp_path / "out"
    r = _run("sweep", str(a), "--heldout", str(b), *ARGS, "-o", str(out))
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("sweep of mixtral-8x7b on h800 (80 GB, $2/GPU-hour): 6 points "
                               "(3 redundancy levels x 2 cluster shapes x 1 methods) in ")
    assert lines[1] == ("workload: decode at 1024 tokens of KV cache per sequence; overlap "
                        "two-batch; tokens/s and $ count output tokens")
    assert lines[2] == "planned from a.npz; judged held-out on b.npz"
    assert lines[3] == ("held-out traces are aggregated counts: cross-node sends are estimated "
                        "from the GPU loads (independent routing), not measured")
    assert lines[4].split() == ["cluster", "redundant", "slots/GPU", "method", "imbalance",
                                "sends/token", "KV", "cache", "tokens/GPU", "batch/GPU",
                                "tokens/s", "tokens/s/GPU", "$/1M", "tokens"]
    assert "2x2      2          -          eplb    skipped: 10 slots do not divide over 4 GPUs" \
        in lines
    assert any(ln.startswith("best: 2x2 eplb with 0 redundant experts (2 slots/GPU): ")
               for ln in lines)
    assert lines[-1] == (f"wrote 5 files to {out}: tokens_per_s.png, usd_per_million_tokens.png, "
                         "sweep.json, best-plan.json, sweep.md")
    data = json.loads((out / "sweep.json").read_text())
    assert data["model"] == "mixtral-8x7b" and len(data["points"]) == 6
    assert r.stderr == ""
    # the best plan records what it was planned from, for `placement compare`
    assert Plan.load(out / "best-plan.json").settings["inputs"] == [str(a.resolve())]


def test_sweep_json(traces: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = traces
    r = _run("sweep", str(a), "--heldout", str(b), *ARGS, "--json", "--model", "mixtral-8x7b",
             "-o", str(tmp_path / "out"))
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["output"] == str(tmp_path / "out") and "best-plan.json" in data["files"]
    assert data["points"][data["best"]]["status"] == "ok"


def test_sweep_prefill(traces: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = traces
    r = _run("sweep", str(a), "--heldout", str(b), *ARGS, "--phase", "prefill",
             "--cache-hit-rate", "0.5", "--prefill-tokens", "4096", "-o", str(tmp_path / "o"))
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[1] == (
        "workload: prefill of 1024-token prompts, 50.0% of prompt tokens from the prefix "
        "cache, 4096 new tokens per GPU per step; overlap two-batch; tokens/s and $ count "
        "input tokens")


def test_sweep_mistakes_get_one_line(traces: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = traces
    out = str(tmp_path / "out")
    _assert_one_line_error(
        _run("sweep", str(a), "--heldout", str(b), *ARGS, "--gpu", "tpu", "-o", out),
        "error: Unknown GPU 'tpu'; choose one of: h800, h100, h200, b200, gb200.")
    _assert_one_line_error(
        _run("sweep", str(a), "--heldout", str(b), *ARGS, "--model", "gpt", "-o", out),
        "error: Unknown model 'gpt'; choose one of: deepseek-moe-16b, deepseek-v3, "
        "flame-moe-290m, kimi-k2, mixtral-8x7b, olmoe-1b-7b, qwen1.5-moe-a2.7b, "
        "qwen3-235b-a22b, qwen3-30b-a3b.")
    _assert_one_line_error(
        _run("sweep", str(a), "--heldout", str(a), *ARGS, "-o", out),
        f"error: {a}: this trace is data every plan of the sweep was made from (its input "
        "a.npz): judge the plan on other data, or pass --allow-overlap for in-sample figures.")
    _assert_one_line_error(
        _run("sweep", str(a), "--heldout", str(b), *ARGS, "--min-user-speed", "20",
             "--phase", "prefill", "-o", out),
        "error: --min-user-speed applies to --phase decode.")
    flame = _counts(tmp_path / "f.npz", 4, experts=64, model="FLAME-MoE-290M", top_k=6)
    flame2 = _counts(tmp_path / "f2.npz", 5, experts=64, model="FLAME-MoE-290M", top_k=6)
    _assert_one_line_error(
        _run("sweep", str(flame), "--heldout", str(flame2), *ARGS, "-o", out),
        "error: model flame-moe-290m has no attention shape (attention, heads, ...): the full "
        "step cannot be costed; give a preset that has one or set those fields.")
    _assert_one_line_error(
        _run("sweep", str(a), "--heldout", str(b), *ARGS, "--model", "flame-moe-290m",
             "-o", out),
        f"error: --model flame-moe-290m has 64 experts per layer but {a} has 8: choose the "
        "model the plan and trace are for (models that fit: mixtral-8x7b).")
    odd = _counts(tmp_path / "odd.npz", 2, experts=5, model="toy")
    odd2 = _counts(tmp_path / "odd2.npz", 3, experts=5, model="toy")
    _assert_one_line_error(
        _run("sweep", str(odd), "--heldout", str(odd2), *ARGS, "-o", out),
        "error: model unknown: give --model NAME (one of: deepseek-moe-16b, deepseek-v3, "
        "flame-moe-290m, kimi-k2, mixtral-8x7b, olmoe-1b-7b, qwen1.5-moe-a2.7b, "
        "qwen3-235b-a22b, qwen3-30b-a3b).")
    _assert_one_line_error(
        _run("sweep", str(tmp_path / "missing.npz"), "--heldout", str(b), *ARGS, "-o", out),
        f"error: {tmp_path / 'missing.npz'}: no such file or directory.")
    assert not Path(out).exists()
    usage = _run("sweep", str(a), *ARGS, "-o", out)
    assert usage.exit_code == 2 and "Missing option '--heldout'" in usage.stderr
    bad = _run("sweep", str(a), "--heldout", str(b), "--redundant", "0,x", "-o", out)
    assert bad.exit_code == 2 and "expected integers separated by commas" in bad.stderr


def test_held_out_windows_of_the_planning_file(traces: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = traces
    out = str(tmp_path / "out")
    ok = _run("sweep", f"{a}#first-half", "--heldout", f"{a}#second-half", *ARGS, "-o", out)
    assert ok.exit_code == 0, ok.output
    _assert_one_line_error(
        _run("sweep", f"{a}#first-half", "--heldout", str(a), *ARGS, "-o", out),
        f"error: {a}: window 0 of this trace is data every plan of the sweep was made from (its "
        f"input a.npz#first-half): judge the plan on other windows (e.g. {a}#1), or pass "
        "--allow-overlap for in-sample figures.")
    diag = _run("sweep", f"{a}#first-half", "--heldout", str(a), "--allow-overlap", *ARGS,
                "-o", out)
    assert diag.exit_code == 0, diag.output
    assert diag.stdout.splitlines()[-2] == (
        f"note: {a}: window 0 of this trace is data every plan of the sweep was made from "
        "(in-sample figures, for diagnosis only).")
