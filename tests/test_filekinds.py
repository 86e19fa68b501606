"""What a file is, told by content: every kind placement knows, from small files of each."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from placement.filekinds import (
    INVALID,
    FileKind,
    Probe,
    identify,
    kinds,
    mismatch,
    register_kind,
    split_spec,
    unregister_kind,
)
from placement.routing_traces import Trace, write_native


class _Evil:
    def __reduce__(self):
        return (print, ("code ran while sniffing",))


def _pt(path: Path, obj: object, legacy: bool = False) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def _json(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


BUILD = {
    "native-trace": lambda d: (write_native(Trace(num_experts=4, topk_ids=np.zeros((2, 1, 2),
                                                                                     int)),
                                            d / "t.npz"), d / "t.npz")[1],
    "sglang-counts": lambda d: _json(d / "c.json", {"logical_count": [[1, 2]]}),
    "sglang-stat": lambda d: _pt(d / "s.pt", {"logical_count": torch.ones(2, 3, 4), "rank": 0}),
    "sglang-rank-dump": lambda d: _pt(d / "r.pt", {"records": [],
                                                   "last_physical_to_logical_map":
                                                   torch.zeros(2, 4, dtype=torch.int64)},
                                      legacy=True),
    "plan": lambda d: _json(d / "p.json", {"format": "placement-plan", "version": 1}),
    "sglang": lambda d: _json(d / "i.json", {"physical_to_logical_map": [[0, 1]]}),
    "trtllm": lambda d: (d / "lb.yaml").write_text("num_slots: 2\ninitial_global_assignments:\n"
                                                   "  3: [0, 1]\n") and d / "lb.yaml",
    "vllm-ascend": lambda d: _json(d / "m.json", {"moe_layer_count": 1, "layer_list": []}),
    "eplb": lambda d: _pt(d / "e.pt", {"phy2log": torch.zeros(1, 2, dtype=torch.int64)}),
    "trtllm-meta": lambda d: _json(d / "meta_info.json", {"num_experts": 4,
                                                          "num_experts_per_token": 2}),
    "trtllm-rank-file": lambda d: (save_file({"0_3": np.ones(4)}, str(d / "rank0.safetensors")),
                                   d / "rank0.safetensors")[1],
    "npy": lambda d: (np.save(d / "a.npy", np.ones(3)), d / "a.npy")[1],
    "cluster": lambda d: (d / "c.toml").write_text("num_nodes = 2\ngpus_per_node = 4\n")
    and d / "c.toml",
    "validation": lambda d: _json(d / "v.json", {"format": "placement-validation"}),
}


@pytest.mark.parametrize("name", sorted(BUILD))
def test_every_kind_is_told_by_content(tmp_path: Path, name: str) -> None:
    path = BUILD[name](tmp_path)
    hidden = path.with_name("no_suffix_" + path.stem)  # never by the name
    path.rename(hidden)
    kind = identify(hidden)
    assert kind is not None and kind.name == name


def test_trace_directories(tmp_path: Path) -> None:
    (tmp_path / "meta_info.json").write_text(json.dumps({"num_experts": 4,
                                                         "num_experts_per_token": 2}))
    kind = identify(tmp_path)
    assert kind is not None and kind.name == "trtllm-stats" and kind.role == "trace"


def test_unknown_and_broken_files(tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(bytes(range(256)))
    (tmp_path / "x.json").write_text('{"a": ')
    (tmp_path / "x.zip").write_bytes(b"PK\x03\x04garbage")
    assert identify(tmp_path / "x.bin") is None
    p = Probe(tmp_path / "x.json")
    assert p.container == "json" and p.json is INVALID and p.json_error is not None
    z = Probe(tmp_path / "x.zip")
    assert z.container == "zip" and z.zip_names is None and z.zip_error
    assert Probe(tmp_path / "missing").container == "missing"
    assert identify(tmp_path / "missing") is None


def test_pickles_are_read_without_running_them(tmp_path: Path, capsys) -> None:
    path = tmp_path / "evil.pt"
    buf = io.BytesIO()
    pickle.dump({"physical_to_logical_map": _Evil()}, buf)
    path.write_bytes(buf.getvalue())
    p = Probe(path)
    assert p.container == "pickle" and "physical_to_logical_map" in p.keys()
    kind = identify(p)
    assert kind is not None and kind.name == "sglang"
    assert "code ran" not in capsys.readouterr().out


def test_mismatch_wording_and_registration(tmp_path: Path) -> None:
    kind = FileKind("thing", "other", "a thing", "do {path} differently")
    assert mismatch(kind, "plan", "f.x") == "a thing, not a placement plan: do f.x differently."
    register_kind(kind, lambda p: p.path.suffix == ".thing")
    try:
        (tmp_path / "a.thing").write_text("x")
        assert identify(tmp_path / "a.thing") == kind
        assert kind in kinds()
    finally:
        unregister_kind("thing")
    assert kind not in kinds()
    with pytest.raises(ValueError):
        FileKind("x", "nonsense", "x")


def test_split_spec(tmp_path: Path) -> None:
    assert split_spec("t.npz#0-3") == ("t.npz", "0-3")
    assert split_spec("t.npz") == ("t.npz", None)
    weird = tmp_path / "a#b.npz"
    weird.write_text("")
    assert split_spec(str(weird)) == (str(weird), None)  # a real file named with a '#'
