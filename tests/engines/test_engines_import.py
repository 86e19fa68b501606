"""Engine files to plans: round trips for every format and plan, layer rules, broken files."""

from __future__ import annotations

import io
import json
import pickle
import zipfile

import numpy as np
import pytest
import torch

from placement.cluster import Cluster
from placement.engines import (
    complete_cluster,
    engine_file_to_plan,
    export_plan,
    import_plan,
    read_engine_file,
)
from placement.errors import ClusterError, EngineFormatError, InputError

FILES = [("sglang", "init.json"), ("sglang", "init.pt"), ("trtllm", "lb.yaml"),
         ("eplb", "eplb.npz"), ("eplb", "eplb.pt"), ("vllm-ascend", "map.json")]


def _export_kwargs(plan, fmt):
    kw = {}
    if fmt == "sglang" and plan.num_hidden_layers is None:
        kw["num_hidden_layers"] = int(plan.layer_ids.max()) + 1
    if fmt == "trtllm" and plan.num_hidden_layers is not None:
        kw["mtp_layers"] = [plan.num_hidden_layers]
    return kw


def _import_kwargs(plan, fmt):
    # vLLM-Ascend files are indexed by MoE layer: the decoder-layer ids come from the model
    if fmt == "vllm-ascend" and plan.num_hidden_layers is not None:
        return {"num_hidden_layers": plan.num_hidden_layers}
    return {}


@pytest.mark.parametrize("plan_name", ["single", "multinode", "subset", "deepseek"])
@pytest.mark.parametrize(("fmt", "name"), FILES)
def test_round_trip(named_plan, tmp_path, plan_name, fmt, name):
    plan = named_plan(plan_name)
    path = tmp_path / name
    export_plan(plan, fmt, path, **_export_kwargs(plan, fmt))
    res = import_plan(path, plan.cluster, **_import_kwargs(plan, fmt))
    got = res.plan
    assert res.fmt == fmt and got.method == f"imported:{fmt}"
    assert np.array_equal(got.phy2log, plan.phy2log)
    assert np.array_equal(got.layer_ids, plan.layer_ids)
    assert got.num_experts == plan.num_experts and got.cluster.shape == plan.cluster.shape
    assert np.array_equal(got.dispatch, plan.dispatch)


def test_round_trip_saved_plan_loads(named_plan, tmp_path):
    plan = named_plan("deepseek")
    export_plan(plan, "sglang", tmp_path / "init.json")
    res = import_plan(tmp_path / "init.json", plan.cluster)
    res.plan.save(tmp_path / "plan.json")
    from placement.plan import Plan

    back = Plan.load(tmp_path / "plan.json")
    assert back.method == "imported:sglang" and back.num_hidden_layers == 61
    assert res.dropped_rows == (0, 1, 2)
    assert any("rows 0-2 equal the trivial row" in n for n in res.notes)


# ---------------------------------------------------------------------------------------------
# layer rules
# ---------------------------------------------------------------------------------------------
def _sglang_file(tmp_path, rows):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"physical_to_logical_map": np.asarray(rows).tolist()}))
    return path


def test_sglang_all_trivial_rows_are_all_moe_layers(tmp_path):
    path = _sglang_file(tmp_path, np.tile(np.arange(8), (3, 1)))
    res = import_plan(path, Cluster(1, 2, 4))
    assert res.plan.layer_ids.tolist() == [0, 1, 2]
    assert any("all taken as MoE layers" in n for n in res.notes)
    res = import_plan(path, Cluster(1, 2, 4), dense_layers=[0])
    assert res.plan.layer_ids.tolist() == [1, 2]
    res = import_plan(path, Cluster(1, 2, 4), layer_ids=[2])
    assert res.plan.layer_ids.tolist() == [2] and res.plan.num_hidden_layers == 3


def test_sglang_num_experts_option(tmp_path):
    # 8 slots, 6 experts (2 redundant): max id + 1 = 6 unless told otherwise
    row = [0, 1, 2, 3, 4, 5, 0, 1]
    path = _sglang_file(tmp_path, [row, [5, 4, 3, 2, 1, 0, 5, 4]])
    assert import_plan(path, Cluster(1, 2, 4)).plan.num_experts == 6
    with pytest.raises(EngineFormatError, match="expert 6 has no replica"):
        import_plan(path, Cluster(1, 2, 4), num_experts=7)


def test_trtllm_mtp_dropped_by_option_or_num_hidden_layers(named_plan, tmp_path):
    plan = named_plan("deepseek")
    path = tmp_path / "lb.yaml"
    export_plan(plan, "trtllm", path, mtp_layers=[61])
    # strip the "# placement:" line: then only the options tell MTP from MoE layers
    text = "\n".join(ln for ln in path.read_text().splitlines() if "placement:" not in ln)
    path.write_text(text + "\n")
    assert import_plan(path, plan.cluster).plan.layer_ids.tolist() == list(range(3, 62))
    assert import_plan(path, plan.cluster, mtp_layers=[61]).plan.layer_ids.tolist() == \
        list(range(3, 61))
    res = import_plan(path, plan.cluster, num_hidden_layers=61)
    assert res.plan.layer_ids.tolist() == list(range(3, 61)) and res.dropped_rows == (61,)


def test_vllm_ascend_layer_ids(named_plan, tmp_path):
    plan = named_plan("subset")  # layers 3..9 of 10
    path = tmp_path / "map.json"
    export_plan(plan, "vllm-ascend", path)
    res = import_plan(path, plan.cluster)
    assert res.plan.layer_ids.tolist() == list(range(7))
    assert any("MoE-layer indices" in n for n in res.notes)
    assert import_plan(path, plan.cluster, dense_layers=[0, 1, 2]).plan.layer_ids.tolist() == \
        list(range(3, 10))
    assert import_plan(path, plan.cluster, layer_ids=range(3, 10)).plan.layer_ids.tolist() == \
        list(range(3, 10))
    with pytest.raises(InputError, match="has 7 MoE layers but 2 layer ids"):
        import_plan(path, plan.cluster, layer_ids=[1, 2])


# ---------------------------------------------------------------------------------------------
# the cluster
# ---------------------------------------------------------------------------------------------
def test_complete_cluster_from_file(named_plan, tmp_path):
    plan = named_plan("deepseek")
    export_plan(plan, "vllm-ascend", tmp_path / "map.json")
    ef = read_engine_file(tmp_path / "map.json")
    assert complete_cluster(ef, gpus_per_node=8).shape == "4x8x9"
    assert complete_cluster(ef, num_nodes=2).shape == "2x16x9"
    with pytest.raises(ClusterError, match="--nodes or --gpus-per-node"):
        complete_cluster(ef)
    with pytest.raises(ClusterError, match="do not split into nodes of 5"):
        complete_cluster(ef, gpus_per_node=5)
    export_plan(plan, "eplb", tmp_path / "e.npz")
    assert complete_cluster(read_engine_file(tmp_path / "e.npz")).shape == "4x8x9"
    export_plan(plan, "sglang", tmp_path / "s.json")
    ef = read_engine_file(tmp_path / "s.json")
    with pytest.raises(ClusterError, match="how many GPUs"):
        complete_cluster(ef)
    assert complete_cluster(ef, num_nodes=4, gpus_per_node=8).shape == "4x8x9"
    assert complete_cluster(ef, preset="deepseek-prefill").shape == "4x8x9"


def test_wrong_slots_for_cluster(named_plan, tmp_path):
    plan = named_plan("deepseek")
    export_plan(plan, "sglang", tmp_path / "s.json")
    with pytest.raises(EngineFormatError, match=r"holds 288 slots per layer but cluster "
                                                r"4x8x8 has 256"):
        import_plan(tmp_path / "s.json", Cluster(4, 8, 8))


def test_wrong_device_count_for_cluster(named_plan, tmp_path):
    plan = named_plan("deepseek")
    export_plan(plan, "vllm-ascend", tmp_path / "m.json")
    with pytest.raises(EngineFormatError, match="on 32 devices but cluster 2x8x18 has 16"):
        import_plan(tmp_path / "m.json", Cluster(2, 8, 18))


# ---------------------------------------------------------------------------------------------
# broken files (one line each, naming the file)
# ---------------------------------------------------------------------------------------------
class _Evil:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def _pt_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


GOOD_ROW = list(range(8))
BROKEN = {
    "empty.json": (b" \n", "is empty"),
    "bad.json": (b'{"a": ', "not valid JSON or YAML"),
    "bad.yaml": (b"num_slots: [1, 2\ninitial_global_assignments: {", "not valid YAML"),
    "list.json": (b"[1, 2, 3]", "not a known engine placement file"),
    "other.json": (b'{"foo": 1}', r"not a known engine placement file \(keys \['foo'\]\)"),
    "plan.json": (b'{"format": "placement-plan"}', "a placement plan, not an engine placement "
                  "file: it is already a placement plan"),
    "logical_count.json": (b'{"logical_count": [[1, 2]]}', r"a routing trace \(SGLang "
                           r"logical_count JSON\), not an engine placement file: make a plan"),
    "extra_key.json": (json.dumps({"physical_to_logical_map": [GOOD_ROW], "x": 1}).encode(),
                       "keys besides 'physical_to_logical_map' .x."),
    "ragged.json": (json.dumps({"physical_to_logical_map": [GOOD_ROW, [1, 2]]}).encode(),
                    "ragged"),
    "floats.json": (json.dumps({"physical_to_logical_map": [[0.5] * 8]}).encode(),
                    "to be an integer array"),
    "negative.json": (json.dumps({"physical_to_logical_map": [[-1, *GOOD_ROW[1:]]]}).encode(),
                      "negative expert ids"),
    "missing_expert.json": (json.dumps({"physical_to_logical_map": [[0] * 7 + [7]]}).encode(),
                            "expert 1 has no replica"),
    "wrong_p.json": (json.dumps({"physical_to_logical_map": [list(range(6))]}).encode(),
                     "holds 6 slots per layer but cluster 1x2x4 has 8"),
    "trt_len.yaml": (b"num_slots: 8\ninitial_global_assignments:\n  0: [0, 1, 2]\n",
                     "layer 0 has 3 slots but num_slots is 8"),
    "trt_key.yaml": (b"num_slots: 8\ninitial_global_assignments:\n  a: [0, 1, 2, 3, 4, 5, 6, 7]\n",
                     "layer key 'a' is not an integer"),
    "trt_extra.yaml": (b"num_slots: 8\nfoo: 1\ninitial_global_assignments:\n  0: [0]\n",
                       "unknown key.s. foo"),
    "trt_none.yaml": (b"num_slots: 8\nlayer_updates_per_iter: 2\n",
                      "has no initial_global_assignments"),
    "trt_path.yaml": (b"moe_config:\n  load_balancer: other.yaml\n",
                      r"points to another file \(other.yaml\)"),
    "trt_slots.yaml": (b"num_slots: eight\ninitial_global_assignments:\n  0: [0]\n",
                       "num_slots must be a positive integer"),
    "va_count.json": (json.dumps({"moe_layer_count": 2, "layer_list": [
        {"layer_id": 0, "device_count": 2, "device_list": [
            {"device_id": 0, "device_expert": [0, 1, 2, 3]},
            {"device_id": 1, "device_expert": [4, 5, 6, 7]}]}]}).encode(),
        "moe_layer_count is 2 but layer_list has 1"),
    "va_ragged.json": (json.dumps({"moe_layer_count": 1, "layer_list": [
        {"layer_id": 0, "device_count": 2, "device_list": [
            {"device_id": 0, "device_expert": [0, 1, 2, 3]},
            {"device_id": 1, "device_expert": [4, 5, 6]}]}]}).encode(),
        "has 3 experts, others 4"),
    "va_devices.json": (json.dumps({"moe_layer_count": 1, "layer_list": [
        {"layer_id": 0, "device_count": 3, "device_list": [
            {"device_id": 0, "device_expert": [0, 1, 2, 3]}]}]}).encode(),
        "device_count is 3 but device_list has 1"),
    "evil.pt": (_pt_bytes({"physical_to_logical_map": _Evil()}), "refusing to load"),
    "evil.npz": (_npz_bytes(phy2log=np.array([{"a": 1}], dtype=object)),
                 "pickled Python objects"),
    "bad_logcnt.npz": (_npz_bytes(phy2log=np.array([GOOD_ROW]), logcnt=np.array([[2] * 8])),
                       "logcnt does not count"),
    "bad_log2phy.pt": (_pt_bytes({"phy2log": torch.tensor([GOOD_ROW]),
                                  "log2phy": torch.tensor([[[1]] * 8])}),
                       "log2phy does not list"),
    "no_phy2log.npz": (_npz_bytes(logcnt=np.ones((1, 8), dtype=np.int64)),
                       "not a known engine placement file"),
    "truncated.pt": (_pt_bytes({"phy2log": torch.tensor([GOOD_ROW])})[:60],
                     "broken zip|not a readable"),
    "binary.bin": (bytes(range(256)), "neither text"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_files(tmp_path, capsys, name):
    content, message = BROKEN[name]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(EngineFormatError, match=message) as info:
        import_plan(path, Cluster(1, 2, 4))
    assert str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)
    assert "code ran" not in capsys.readouterr().out


def test_missing_file(tmp_path):
    with pytest.raises(EngineFormatError, match="no such file"):
        read_engine_file(tmp_path / "nope.json")


def test_format_mismatch(named_plan, tmp_path):
    export_plan(named_plan("single"), "eplb", tmp_path / "e.npz")
    with pytest.raises(EngineFormatError, match="holds a eplb placement, not sglang"):
        read_engine_file(tmp_path / "e.npz", "sglang")
    with pytest.raises(InputError, match="Unknown engine format"):
        read_engine_file(tmp_path / "e.npz", "tgi")


def test_duplicate_replica_on_one_gpu_is_imported(tmp_path):
    # SGLang's trivial map with 8 slots per GPU and 4 experts puts every expert twice on a GPU;
    # the engine accepts it, so the import keeps it as it is
    path = _sglang_file(tmp_path, [np.arange(8) % 4])
    plan = import_plan(path, Cluster(1, 1, 8)).plan
    assert plan.allow_colocated_replicas
    assert plan.logcnt.tolist() == [[2, 2, 2, 2]]


def test_engine_file_to_plan_layer_options_conflict(named_plan, tmp_path):
    export_plan(named_plan("single"), "eplb", tmp_path / "e.npz")
    ef = read_engine_file(tmp_path / "e.npz")
    with pytest.raises(InputError, match="not both"):
        engine_file_to_plan(ef, named_plan("single").cluster, layer_ids=[0], dense_layers=[1])


def test_torch_zip_detected_even_with_npz_suffix(named_plan, tmp_path):
    plan = named_plan("single")
    export_plan(plan, "eplb", tmp_path / "e.pt")
    (tmp_path / "e.pt").rename(tmp_path / "e.npz")
    assert zipfile.is_zipfile(tmp_path / "e.npz")
    assert import_plan(tmp_path / "e.npz", plan.cluster).fmt == "eplb"


def test_bare_pickle_refused(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(pickle.dumps({"physical_to_logical_map": _Evil()}, protocol=2))
    with pytest.raises(EngineFormatError, match=r"refusing|not a readable"):
        import_plan(path, Cluster(1, 2, 4))


# ---------------------------------------------------------------------------------------------
# real EPLB outputs (the real-data folder's reference/, computed by DeepSeek's reference
# implementation; skipped where it is absent)
# ---------------------------------------------------------------------------------------------
def _reference_eplb_file(real_data, tmp_path, case):
    with np.load(real_data("reference/eplb_reference_outputs.npz"), allow_pickle=False) as z:
        phy2log, logcnt = z[f"{case}__phy2log"], z[f"{case}__logcnt"]
    path = tmp_path / "eplb.npz"
    np.savez(path, phy2log=phy2log, logcnt=logcnt, layer_ids=np.arange(3, 61))
    return path, phy2log, logcnt


def test_import_reference_eplb_output(real_data, tmp_path):
    path, phy2log, logcnt = _reference_eplb_file(real_data, tmp_path,
                                                 "prefill_in2048__P256_g8_n4_G32")
    res = import_plan(path, Cluster(4, 8, 8), num_hidden_layers=61)
    assert np.array_equal(res.plan.phy2log, phy2log)
    assert np.array_equal(res.plan.logcnt, logcnt)
    assert res.plan.layer_ids.tolist() == list(range(3, 61))
    # and out to SGLang: 61 rows, rows 0-2 trivial
    export_plan(res.plan, "sglang", tmp_path / "init.json")
    m = json.loads((tmp_path / "init.json").read_text())["physical_to_logical_map"]
    assert len(m) == 61 and m[0] == list(range(256)) and m[3] == phy2log[0].tolist()


def test_import_reference_eplb_with_two_replicas_on_a_gpu(real_data, tmp_path):
    # DeepSeek's EPLB puts two replicas of one expert on one GPU in some layers of this case
    path, phy2log, logcnt = _reference_eplb_file(real_data, tmp_path,
                                                 "prefill_in4096__P288_g8_n4_G32")
    plan = import_plan(path, Cluster(4, 8, 9)).plan
    assert np.array_equal(plan.phy2log, phy2log) and np.array_equal(plan.logcnt, logcnt)
    per_gpu = np.sort(plan.phy2log.reshape(58, 32, 9), axis=2)
    assert (per_gpu[:, :, 1:] == per_gpu[:, :, :-1]).any()
