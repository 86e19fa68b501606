"""``placement capture``: exit codes and exact lines, with and without transformers."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from placement.routing_traces import read_native

INSTALL = "error: capture needs the transformers package: pip install 'placement[capture]'\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny random Qwen3-MoE (3 layers, 8 experts, top-2) with a word-level tokenizer that
    ``placement capture --make-tiny-model DIR`` writes."""
    pytest.importorskip(
        "transformers", reason="capture tests need transformers: pip install 'placement[capture]'"
    )
    from placement.routing_traces.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("qwen3-moe-tiny"))


def test_make_tiny_model_then_capture_as_the_docs_say(run, tmp_path, monkeypatch):
    """docs/capture.md: make the tiny model with one command, then capture from it."""
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    r = run("capture", "--make-tiny-model", "tiny-qwen3-moe")
    assert r.exit_code == 0, r.output
    assert r.stdout == ("wrote a tiny random Qwen3-MoE (3 layers, 8 experts, top-2) to "
                        "tiny-qwen3-moe: placement capture tiny-qwen3-moe --prompts FILE -o "
                        "trace.npz (words w0 ... w95)\n")
    assert r.stderr == ""
    (tmp_path / "prompts.txt").write_text("w1 w2 w3\nw4 w5 w6\nw7 w8 w9\nw10 w11 w12\n")
    r = run("capture", "tiny-qwen3-moe", "--prompts", "prompts.txt", "--batch-size", 2,
            "-o", "trace.npz")
    assert r.exit_code == 0, r.output
    assert r.stdout == ("captured 12 tokens x 3 MoE layers (decoder layers 0-2) x top-2 of 8 "
                        "experts in 2 batch(es) -> trace.npz\n")
    assert read_native(tmp_path / "trace.npz").model == "tiny-qwen3-moe"


def test_make_tiny_model_alone(run, error, tmp_path):
    error(run("capture", "--make-tiny-model", tmp_path / "m", "-o", tmp_path / "t.npz"),
          "error: --make-tiny-model DIR writes a model and stops: give it alone, then capture "
          "from DIR (see 'placement capture --help').", code=2)
    error(run("capture", "--prompts", tmp_path / "p.txt"),
          "error: Missing argument 'MODEL_PATH' (see 'placement capture --help').", code=2)


def test_capture_prompts(run, model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("w1 w2 w3\nw4 w5\nw6 w7 w8 w9\n")
    out = tmp_path / "trace.npz"
    r = run("capture", model_dir, "--prompts", prompts, "-o", out, "--batch-size", 2)
    assert r.exit_code == 0, r.output
    assert r.stdout == ("captured 9 tokens x 3 MoE layers (decoder layers 0-2) x top-2 of 8 "
                        f"experts in 2 batch(es) -> {out}\n")
    t = read_native(out)
    assert t.topk_ids.shape == (9, 3, 2) and t.model == model_dir.name
    assert t.window.tolist() == [0] * 5 + [1] * 4


def test_capture_token_ids_and_text(run, model_dir, tmp_path):
    ids = tmp_path / "ids.npy"
    np.save(ids, np.arange(4, 24))
    out = tmp_path / "t.npz"
    r = run("capture", model_dir, "--token-ids", ids, "--max-length", 8, "-o", out,
            "--model-name", "tiny")
    assert r.exit_code == 0, r.output
    assert r.stdout == ("captured 20 tokens x 3 MoE layers (decoder layers 0-2) x top-2 of 8 "
                        f"experts in 1 batch(es) -> {out}\n")
    assert read_native(out).model == "tiny"
    text = tmp_path / "t.txt"
    text.write_text("w1 w2 w3 w4 w5")
    r = run("capture", model_dir, "--text", text, "-o", out)
    assert r.exit_code == 0 and r.stdout.startswith("captured 5 tokens")


def test_capture_input_errors(run, model_dir, tmp_path):
    r = run("capture", model_dir, "-o", tmp_path / "t.npz")
    assert r.exit_code == 2
    assert "Give exactly one of --prompts, --text or --token-ids" in r.stderr
    r = run("capture", model_dir, "--prompts", tmp_path / "none.txt", "-o", tmp_path / "t.npz")
    assert r.exit_code == 1
    assert r.stderr == f"error: {tmp_path / 'none.txt'}: no such file.\n"
    np.save(tmp_path / "big.npy", np.array([5, 1000]))
    r = run("capture", model_dir, "--token-ids", tmp_path / "big.npy", "-o", tmp_path / "t.npz")
    assert r.exit_code == 1
    assert r.stderr == "error: token id 1000 is outside the model's vocabulary (100).\n"
    r = run("capture", tmp_path, "--token-ids", tmp_path / "big.npy", "-o", tmp_path / "t.npz")
    assert r.exit_code == 1
    assert r.stderr == (f"error: {tmp_path}: not a local Hugging Face model directory (no "
                        "config.json); capture loads local weights only.\n")
    assert not (tmp_path / "t.npz").exists()


def test_capture_without_transformers(run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    (tmp_path / "p.txt").write_text("hello\n")
    r = run("capture", tmp_path, "--prompts", tmp_path / "p.txt", "-o", tmp_path / "t.npz")
    assert r.exit_code == 1
    assert r.stderr == INSTALL
