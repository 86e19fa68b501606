"""``placement trace``: exit codes and exact lines of inspect, synth, convert and errors."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from placement.routing_traces import Trace, load_trace, read_native, write_native


@pytest.fixture
def small_trace(tmp_path: Path) -> Path:
    ids = np.array([[[0, 1], [2, 3]], [[0, 1], [1, 2]], [[2, 3], [0, 3]], [[0, 2], [0, 1]]])
    t = Trace(num_experts=4, topk_ids=ids, layer_ids=[1, 2], num_hidden_layers=3,
              window=np.array([0, 0, 1, 1]), window_names=["a", "b"], model="toy",
              source_rank=np.array([0, 1, 0, 1]))
    write_native(t, tmp_path / "toy.npz")
    return tmp_path / "toy.npz"


def test_inspect_prints_the_report(run, small_trace: Path) -> None:
    result = run("trace", "inspect", str(small_trace))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:8] == [
        f"trace         {small_trace}",
        "model         toy",
        "routing       token-level: 4 tokens, top-2",
        "layers        2 MoE (ids 1-2) of 3 decoder layers; dense: 0",
        "experts       4 per layer",
        "windows       2: a, b",
        "source ranks  2",
        "assignments   16 (all layers)",
    ]
    assert result.stderr == ""


def test_inspect_per_layer_table(run, small_trace: Path) -> None:
    result = run("trace", "inspect", str(small_trace), "--per-layer")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[-3].split() == ["layer", "max/mean", "hot10%", "top1%", "pairs", "indep"]
    # layer 1 counts [3, 2, 2, 1]: max/mean 1.5, hot 3/8
    assert lines[-2].split()[:3] == ["1", "1.50", "0.375"]


def test_inspect_json(run, small_trace: Path) -> None:
    result = run("trace", "inspect", str(small_trace), "--json")
    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) == 1
    d = json.loads(result.stdout)
    assert (d["num_layers"], d["num_experts"], d["top_k"], d["num_tokens"], d["num_windows"]) == \
        (2, 4, 2, 4, 2)
    assert d["dense_layer_ids"] == [0] and d["num_source_ranks"] == 2
    assert set(d["skew"]) == {"max_over_mean", "hot10_share"}
    assert d["drift"]["tv_pairwise_mean"] == pytest.approx(d["drift"]["tv_pairwise_max"])


def test_inspect_counts_directory_as_windows(run, deepseek_counts_dir: Path) -> None:
    result = run("trace", "inspect", str(deepseek_counts_dir), "--json")
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert (d["num_layers"], d["num_experts"], d["top_k"], d["num_tokens"], d["num_windows"]) == \
        (58, 256, 8, None, len(list(deepseek_counts_dir.glob("*.json"))))  # top-8: model guessed
    assert d["num_hidden_layers"] == 61 and d["dense_layer_ids"] == [0, 1, 2]
    assert d["coactivation"] is None


def test_inspect_several_files(run, tmp_path: Path, small_trace: Path) -> None:
    other = tmp_path / "other.npz"
    write_native(load_trace(small_trace), other)
    result = run("trace", "inspect", str(small_trace), str(other), "--json")
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert d["num_windows"] == 4 and d["window_names"] == ["toy:a", "toy:b", "other:a", "other:b"]


def test_synth_writes_a_trace(run, tmp_path: Path) -> None:
    out = tmp_path / "s.npz"
    args = ["trace", "synth", "--preset", "deepseek-v3", "--tokens", "256", "--windows", "2",
            "--source-ranks", "8", "--layers", "3", "--seed", "4", "-o", str(out)]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"wrote {out}: synthetic DeepSeek-V3, 256 tokens x 3 MoE layers, top-8 of 256 experts, "
        "2 windows, 8 source ranks"
    ]
    t = read_native(out)
    assert t.topk_ids.shape == (256, 3, 8) and t.num_hidden_layers == 61
    first = t.topk_ids.copy()
    assert run(*args).exit_code == 0
    np.testing.assert_array_equal(read_native(out).topk_ids, first)  # deterministic


def test_synth_like_and_bundled_source(run, tmp_path: Path) -> None:
    out = tmp_path / "like.npz"
    result = run("trace", "synth", "--preset", "mixtral", "--tokens", "512", "--like",
                  "bundled:mixtral", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert read_native(out).num_experts == 8


def test_convert_json_directory(run, tmp_path: Path, deepseek_counts_dir: Path) -> None:
    out = tmp_path / "ds.npz"
    result = run("trace", "convert", str(deepseek_counts_dir), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {out}: counts (")
    n = len(list(deepseek_counts_dir.glob("*.json")))
    assert result.stdout.rstrip().endswith(f"x 58 MoE layers, 256 experts, {n} windows")
    back, src = read_native(out), load_trace(deepseek_counts_dir)
    np.testing.assert_array_equal(back.window_counts(), src.window_counts())
    assert back.window_names == src.window_names and back.dense_layer_ids == (0, 1, 2)


def test_bundled_lists_shipped_traces(run) -> None:
    result = run("trace", "bundled")
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert {"bundled:deepseek-v3", "bundled:mixtral", "bundled:qwen3-235b"} <= set(names)


class _Evil:
    marker = ""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_error_missing_file(run, error, tmp_path: Path) -> None:
    error(run("trace", "inspect", str(tmp_path / "nope.npz")),
                           contains=f"{tmp_path / 'nope.npz'}: no such file or directory.")


def test_error_pickle_with_code(run, error, tmp_path: Path) -> None:
    _Evil.marker = str(tmp_path / "PWNED")
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"logical_count": _Evil()}))
    error(run("trace", "convert", str(tmp_path / "evil.pt"), "-o",
                                str(tmp_path / "x.npz")), contains="refusing to load")
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "x.npz").exists()


def test_error_mixed_models(run, error, tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"logical_count": [[1, 2]]}))
    (tmp_path / "b.json").write_text(json.dumps({"logical_count": [[1, 2, 3]]}))
    error(run("trace", "inspect", str(tmp_path)),
                           contains=f"{tmp_path / 'b.json'}: has 3 experts but a.json has 2")


def test_error_like_with_other_expert_count(run, error, tmp_path: Path) -> None:
    error(
        run("trace", "synth", "--preset", "olmoe", "--like", "bundled:mixtral", "--tokens", "8",
             "-o", str(tmp_path / "x.npz")),
        contains="--like trace has 8 experts but preset olmoe has 64")


def test_error_unknown_bundled(run, error) -> None:
    error(run("trace", "inspect", "bundled:gpt"), contains="no bundled trace 'gpt'")


@pytest.mark.parametrize("args", [
    ["trace", "synth", "--preset", "gpt-5", "-o", "x.npz"],
    ["trace", "synth", "--tokens", "0", "-o", "x.npz"],
    ["trace", "synth"],
    ["trace", "inspect"],
])
def test_usage_errors_exit_2(run, args: list[str]) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def _examples(help_text: str) -> list[list[str]]:
    """The example command lines of a help text (continuations joined, comments dropped)."""
    import shlex

    out: list[str] = []
    for line in help_text.splitlines():
        s = line.strip()
        if out and out[-1].endswith("\\"):
            out[-1] = out[-1][:-1] + " " + s
        elif s.startswith("placement "):
            out.append(s)
    return [shlex.split(x, comments=True) for x in out]


@pytest.mark.parametrize("command", [["demo"], ["trace", "synth"], ["trace", "inspect"],
                                     ["trace", "bundled"]])
def test_help_has_examples_that_parse(run, command: list[str]) -> None:
    """demo and trace synth/inspect/bundled show examples, and every example is a command
    line the CLI accepts (options and values checked by click's parser)."""
    import click

    from placement.cli import main

    examples = _examples(run(*command, "--help").stdout)
    assert any(ex[1:1 + len(command)] == command for ex in examples), examples
    for ex in examples:
        ctx = click.Context(main)
        cmd: click.Command = main
        args = ex[1:]
        while isinstance(cmd, click.Group):
            sub = cmd.get_command(ctx, args[0])
            assert sub is not None, ex
            cmd, args = sub, args[1:]
        cmd.make_context(" ".join(ex[:2]), args)  # raises on an unknown option or bad value


def test_bundled_examples_run(run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run("trace", "inspect", "bundled:mixtral").exit_code == 0
    assert run("trace", "bundled").stdout.startswith("bundled:deepseek-v3 ")
