"""Sharded traces on the command line: ``trace convert --sharded`` (native .npz, SGLang per_token
directories), ``validate`` / ``compare`` / ``trace inspect`` streaming, and their errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from placement.cluster import Cluster
from placement.plan import Plan
from placement.routing_traces import Trace, load_trace, synthesize, write_native
from placement.routing_traces.sharded import ShardedTrace, open_sharded

LAYERS, E, P = 4, 6, 8  # SGLang run: layer 0 is dense, 8 physical slots


def _p2l() -> np.ndarray:
    rows = []
    for layer in range(LAYERS):
        perm = np.roll(np.arange(E), layer)
        rows.append(np.concatenate([perm, [perm[1], perm[4]]]))
    return np.asarray(rows)


def _per_token_dir(tmp_path: Path, per_token: bool = True) -> Path:
    """Two ranks' ``per_token`` dumps (``_DetailAccumulator.dump``'s layout), 3 passes each."""
    rng = np.random.default_rng(5)
    d = tmp_path / "dumps"
    d.mkdir()
    for rank in (1, 0):
        records: list[dict[str, Any]] = []
        for fpid in (7, 8, 9):
            n = 3 + fpid % 3 + rank
            ids = np.full((LAYERS, n, 8), -1, dtype=np.int32)
            for layer in range(1, LAYERS):
                for t in range(n):
                    ids[layer, t, :3] = rng.choice(P, size=3, replace=False)
            count = np.stack([np.bincount(ids[la][ids[la] >= 0], minlength=P)
                              for la in range(LAYERS)])
            rec: dict[str, Any] = dict(forward_pass_id=fpid, rank=rank, gatherer_key="primary",
                                       global_physical_count=torch.tensor(count))
            if per_token:
                rec.update(topk_ids_of_layer=torch.tensor(ids), forward_mode=1, misc_objects=[])
            records.append(rec)
        torch.save(dict(records=records, last_physical_to_logical_map=torch.tensor(_p2l())),
                   d / f"expert_distribution_recorder_1700000000.0_{rank}.pt")
    return d


def _rows(t: Trace) -> np.ndarray:
    """Every token as one row (window, rank, ids...), sorted: the trace up to token order."""
    ids = t.topk_ids.reshape(t.num_tokens or 0, -1).astype(np.int64)
    rows = np.column_stack([np.asarray(t.window), np.asarray(t.source_rank), ids])
    return rows[np.lexsort(rows.T[::-1])]


def test_convert_native_round_trip(run, tmp_path: Path) -> None:
    t = synthesize("deepseek-v3", num_tokens=3000, num_windows=3, num_source_ranks=4,
                   num_layers=2, seed=2)
    write_native(t, tmp_path / "t.npz")  # compressed: read off the deflate stream
    r = run("trace", "convert", tmp_path / "t.npz", "-o", tmp_path / "sh", "--shard-tokens", 700)
    assert r.exit_code == 0, r.output
    assert r.stdout.endswith("; 5 shards (streamed)\n")
    st = open_sharded(tmp_path / "sh", verify=True)
    assert [s.tokens for s in st.shards] == [700, 700, 700, 700, 200]
    back = st.to_trace()
    assert np.array_equal(back.topk_ids, t.topk_ids)
    assert back.window_names == t.window_names and back.model == t.model
    assert np.array_equal(np.asarray(back.source_rank), np.asarray(t.source_rank))
    # and back to .npz
    r = run("trace", "convert", tmp_path / "sh", "-o", tmp_path / "back.npz")
    assert r.exit_code == 0, r.output
    assert np.array_equal(load_trace(tmp_path / "back.npz").topk_ids, t.topk_ids)


def test_convert_sglang_per_token(run, tmp_path: Path) -> None:
    d = _per_token_dir(tmp_path)
    r = run("trace", "convert", d, "-o", tmp_path / "sh", "--sharded", "--shard-tokens", 10)
    assert r.exit_code == 0, r.output
    assert "(streamed)" in r.stdout
    whole = load_trace(d)
    st = open_sharded(tmp_path / "sh")
    assert st.num_tokens == whole.num_tokens and st.top_k == whole.top_k == 3
    assert st.layer_ids.tolist() == whole.layer_ids.tolist() == [1, 2, 3]
    assert st.num_hidden_layers == LAYERS and st.window_names == whole.window_names
    assert np.array_equal(_rows(st.to_trace()), _rows(whole))
    np.testing.assert_array_equal(st.window_rank_counts(), whole.window_rank_counts())


def test_convert_counts_is_one_line(run, error, tmp_path: Path) -> None:
    d = _per_token_dir(tmp_path, per_token=False)
    r = run("trace", "convert", d, "-o", tmp_path / "sh", "--sharded")
    error(r, f"error: {d}: holds aggregated counts; a sharded trace holds token-level routing "
             "(convert counts to a native .npz: leave out --sharded).")
    assert not (tmp_path / "sh").exists()


def test_convert_refuses_other_directory(run, error, tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = run("trace", "convert", "bundled:deepseek-v3", "-o", out, "--sharded")
    error(r, f"error: {out}: a directory that is not a sharded trace and not empty; refusing "
             "to write into it (give a new path).")


# -------------------------------------------------------------------------------------------
# streaming consumers
# -------------------------------------------------------------------------------------------
@pytest.fixture
def held(tmp_path: Path) -> dict[str, str]:
    rng = np.random.default_rng(0)
    pr = np.array([0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05])
    ids = np.stack([np.stack([rng.choice(8, 2, replace=False, p=pr) for _ in range(2)])
                    for _ in range(300)])
    t = Trace(num_experts=8, topk_ids=ids, layer_ids=[3, 4], source_rank=rng.integers(0, 4, 300),
              window=np.repeat([0, 1, 2], 100), model="toy")
    write_native(t, tmp_path / "held.npz")
    rows = np.array([[0, 1, 2, 0, 1, 3, 6, 1, 4, 0, 7, 5], [0, 1, 6, 0, 1, 7, 4, 1, 2, 0, 5, 3]])
    Plan(cluster=Cluster(2, 2, 3), num_experts=8, layer_ids=np.array([3, 4]), phy2log=rows,
         method="hand").save(tmp_path / "plan.json")
    r_npz, r_dir = str(tmp_path / "held.npz"), str(tmp_path / "sh")
    from placement.routing_traces.sharded import write_sharded

    write_sharded(t, r_dir, shard_tokens=64)
    return {"npz": r_npz, "dir": r_dir, "plan": str(tmp_path / "plan.json"),
            "out": str(tmp_path / "report")}


def _figures(text: str) -> dict[str, Any]:
    d = json.loads(text)
    for k in ("wall_time", "trace_name", "trace"):
        d.pop(k, None)
    return d


@pytest.mark.parametrize("dispatch", ["static", "even"])
def test_validate_sharded_equals_npz(run, held: dict[str, str], dispatch: str) -> None:
    # integer sums under static / plan: the same to the last digit; even: float expected values
    # summed per shard, the same to rounding
    a = run("validate", held["plan"], held["npz"], "--json", "--device", "cpu",
            "--dispatch", dispatch)
    b = run("validate", held["plan"], held["dir"], "--json", "--device", "cpu",
            "--dispatch", dispatch)
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    fa, fb = _figures(a.stdout), _figures(b.stdout)
    if dispatch == "even":
        assert fa["cross_node_sends_per_token"] == pytest.approx(
            fb["cross_node_sends_per_token"], rel=1e-12)
        fa.pop("layers"), fb.pop("layers")
        fa.pop("cross_node_sends_per_token"), fb.pop("cross_node_sends_per_token")
        fa = {k: v for k, v in fa.items() if "sends" not in k and "bytes" not in k}
        fb = {k: v for k, v in fb.items() if "sends" not in k and "bytes" not in k}
    assert fa == fb
    c = run("validate", held["plan"], held["npz"] + "#1-2", "--json", "--device", "cpu")
    d = run("validate", held["plan"], held["dir"] + "#1-2", "--json", "--device", "cpu")
    assert _figures(c.stdout) == _figures(d.stdout)


def test_validate_text_names_the_directory(run, held: dict[str, str]) -> None:
    r = run("validate", held["plan"], held["dir"], "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0].startswith(f"replayed trace {held['dir']} against plan")
    assert "300 tokens" in r.stdout.splitlines()[0]


def test_validate_broken_shard_is_one_line(run, error, held: dict[str, str]) -> None:
    f = Path(held["dir"]) / "shard-00002.topk_ids.npy"
    f.write_bytes(f.read_bytes()[:-4])
    r = run("validate", held["plan"], held["dir"])
    error(r, contains="shard-00002.topk_ids.npy is ")


def test_compare_sharded_equals_npz(run, held: dict[str, str], tmp_path: Path) -> None:
    a = run("compare", held["plan"], held["npz"], "--baseline", "contiguous", "-o",
            tmp_path / "a")
    b = run("compare", held["plan"], held["dir"], "--baseline", "contiguous", "-o",
            tmp_path / "b")
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    assert a.stdout.splitlines()[:-1] == b.stdout.splitlines()[:-1]  # all but "wrote ... to DIR"
    assert len(a.stdout.splitlines()) > 4


def test_inspect_sharded_equals_npz(run, held: dict[str, str]) -> None:
    a = run("trace", "inspect", held["npz"], "--json")
    b = run("trace", "inspect", held["dir"], "--json")
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    da, db = json.loads(a.stdout), json.loads(b.stdout)
    da.pop("source")
    db.pop("source")
    assert da == db


def test_sharded_reads_whole_elsewhere(held: dict[str, str]) -> None:
    t = load_trace(held["dir"])  # commands that do not stream read it whole
    assert isinstance(t, Trace) and not isinstance(t, ShardedTrace) and t.num_tokens == 300


def test_solve_on_sharded(run, held: dict[str, str], tmp_path: Path) -> None:
    a = run("solve", held["npz"], "--nodes", 2, "--gpus-per-node", 2, "--slots-per-gpu", 3,
            "-o", tmp_path / "a.json", "--json")
    b = run("solve", held["dir"], "--nodes", 2, "--gpus-per-node", 2, "--slots-per-gpu", 3,
            "-o", tmp_path / "b.json", "--json")
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    pa, pb = Plan.load(tmp_path / "a.json"), Plan.load(tmp_path / "b.json")
    assert np.array_equal(pa.phy2log, pb.phy2log)  # small: read whole, the same plan


def test_convert_sglang_bad_record_is_one_line(run, error, tmp_path: Path) -> None:
    d = _per_token_dir(tmp_path)
    f = d / "expert_distribution_recorder_1700000000.0_0.pt"
    obj = torch.load(f, weights_only=True)
    obj["records"][1]["topk_ids_of_layer"][2, 0, 0] = P  # one past the last physical slot
    torch.save(obj, f)
    r = run("trace", "convert", d, "-o", tmp_path / "sh", "--sharded")
    error(r, f"error: {f}: records[1].topk_ids_of_layer holds physical id {P}, outside "
             f"[-1, {P}).")
    assert [p.name for p in tmp_path.iterdir() if p.name != "dumps"] == []


def test_eplb_baseline_from_sharded(run, held: dict[str, str], tmp_path: Path) -> None:
    cl = ("--nodes", 2, "--gpus-per-node", 2, "--slots-per-gpu", 3)
    a = run("compare", held["npz"] + "#2", *cl, "--baseline-from", held["npz"] + "#0-1",
            "--baseline", "eplb", "-o", tmp_path / "a")
    b = run("compare", held["dir"] + "#2", *cl, "--baseline-from", held["dir"] + "#0-1",
            "--baseline", "eplb", "-o", tmp_path / "b")
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    assert a.stdout.splitlines()[:-1] == b.stdout.splitlines()[:-1]
