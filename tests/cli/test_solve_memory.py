"""``placement solve --gpu --model --kv-reserve-gb``: slots from the memory budget, and why."""

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
    assert result.stderr.splitlines() == [line], result.stderr
    assert "Traceback" not in result.output


@pytest.fixture
def mixtral_counts(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    counts = np.rint(rng.dirichlet(np.full(8, 2.0), size=(2, 2)) * 20000)
    write_native(Trace(num_experts=8, counts=counts, layer_ids=[0, 1], num_hidden_layers=32,
                       top_k=2, model="Mixtral-8x7B-Instruct"), tmp_path / "m.npz")
    return tmp_path / "m.npz"


def test_slots_come_from_the_gpu_memory(mixtral_counts: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    r = _run("solve", str(mixtral_counts), "--nodes", "1", "--gpus-per-node", "2", "--gpu", "h800",
             "--model", "mixtral-8x7b", "--kv-reserve-gb", "20", "--method", "eplb", "-o", str(out))
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    # 80 GB - 3.2 GB attention, router and BF16 embeddings - 20 GB - 8 GB (10 %) = 48.8 GB;
    # one slot = 32 layers x 3 x 4096 x 14336 x 2 B = 11.27 GB: 4 slots
    assert lines[0] == (
        "slots per GPU: (h800 80 GB - 3.2 GB non-routed weights of mixtral-8x7b - 20 GB KV cache "
        "- 8.0 GB runtime) = 48.8 GB for routed experts / 11.274 GB per slot (32 MoE layers x "
        "352.3 MB) = 4")
    assert lines[1] == ("method eplb: 2 layer(s) x 8 experts on 1 node(s) x 2 GPU(s), 4 slot(s)/GPU "
                        "= 8 slots per layer")
    plan = Plan.load(out)
    assert plan.cluster.slots_per_gpu == 4 and plan.cluster.gpu == "h800"
    assert plan.cluster.memory is not None and plan.cluster.memory.kv_reserve_gb == 20


def test_fewer_slots_than_fit_and_the_model_guessed(mixtral_counts: Path, tmp_path: Path) -> None:
    r = _run("solve", str(mixtral_counts), "--nodes", "1", "--gpus-per-node", "2", "--gpu", "h200",
             "--kv-reserve-gb", "20", "--slots-per-gpu", "5", "--method", "eplb",
             "-o", str(tmp_path / "p.json"))
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0] == (
        "slots per GPU: (h200 141 GB - 3.2 GB non-routed weights of mixtral-8x7b - 20 GB KV cache "
        "- 14.1 GB runtime) = 103.7 GB for routed experts / 11.274 GB per slot (32 MoE layers x "
        "352.3 MB) = 9; using 5 (--slots-per-gpu)")


def test_json_carries_the_budget(mixtral_counts: Path, tmp_path: Path) -> None:
    r = _run("solve", str(mixtral_counts), "--nodes", "1", "--gpus-per-node", "2", "--gpu", "h200",
             "--kv-reserve-gb", "20", "--runtime-reserve-gb", "10", "--method", "eplb", "--json",
             "-o", str(tmp_path / "p.json"))
    assert r.exit_code == 0, r.output
    mem = json.loads(r.stdout)["memory"]
    assert (mem["slots_fit"], mem["slots_per_gpu"], mem["kv_reserve_gb"], mem["runtime_gb"]) == \
        (9, 9, 20.0, 10.0)
    assert mem["explain"].startswith("slots per GPU: (h200 141 GB - 3.2 GB")


def test_memory_mistakes_get_one_line(mixtral_counts: Path, tmp_path: Path) -> None:
    base = ("solve", str(mixtral_counts), "--nodes", "1", "--gpus-per-node", "2",
            "--method", "eplb", "-o", str(tmp_path / "p.json"))
    _assert_one_line_error(
        _run(*base, "--gpu", "a100", "--kv-reserve-gb", "20"),
        "error: Unknown GPU 'a100'; choose one of: h800, h100, h200, b200, gb200.")
    _assert_one_line_error(
        _run(*base, "--gpu", "h800", "--model", "gpt", "--kv-reserve-gb", "20"),
        "error: Unknown model 'gpt'; choose one of: deepseek-moe-16b, deepseek-v3, "
        "flame-moe-290m, kimi-k2, mixtral-8x7b, olmoe-1b-7b, qwen1.5-moe-a2.7b, "
        "qwen3-235b-a22b, qwen3-30b-a3b.")
    _assert_one_line_error(
        _run(*base, "--gpu", "h800", "--kv-reserve-gb", "70"),
        "error: no room for one expert slot on h800 (80 GB): 3.2 GB non-routed weights of "
        "mixtral-8x7b + 70 GB KV cache + 8.0 GB runtime reserve exceed it by 1.21 GB; one slot "
        "needs 11.27 GB (32 MoE layers x 352.3 MB).")
    _assert_one_line_error(
        _run(*base, "--gpu", "h800", "--kv-reserve-gb", "60"),
        "error: no room for one expert slot on h800 (80 GB): 3.2 GB non-routed weights of "
        "mixtral-8x7b + 60 GB KV cache + 8.0 GB runtime reserve leave 8.79 GB; one slot needs "
        "11.27 GB (32 MoE layers x 352.3 MB).")
    _assert_one_line_error(
        _run(*base, "--gpu", "h800", "--kv-reserve-gb", "20", "--slots-per-gpu", "5"),
        "error: slots_per_gpu=5 needs 56.37 GB per GPU but only 48.79 GB is free for experts "
        "(at most 4 slots fit; short by 7.58 GB).")
    _assert_one_line_error(
        _run(*base, "--gpu", "h800"),
        "error: --gpu needs --kv-reserve-gb GB: the memory per GPU to keep for the KV cache "
        "(what is left after it goes to expert slots).")
    _assert_one_line_error(
        _run(*base, "--kv-reserve-gb", "20", "--slots-per-gpu", "4"),
        "error: --kv-reserve-gb sets the memory budget: give --gpu NAME with it.")
    _assert_one_line_error(
        _run(*base, "--gpu", "h800", "--model", "deepseek-v3", "--kv-reserve-gb", "20"),
        "error: model deepseek-v3 has 256 experts but the traces have 8.")
    assert not (tmp_path / "p.json").exists()
