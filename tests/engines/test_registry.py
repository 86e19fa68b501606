"""The engine formats are a registry: a new format is one module and one registry line, and the
CLI, FORMATS, import detection and file kinds follow."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from toy_format import FORMAT

import placement.engines as engines
from placement.cli import main
from placement.cluster import Cluster
from placement.engines import import_plan, register_format, unregister_format
from placement.filekinds import identify
from placement.plan import Plan


@pytest.fixture
def toy() -> Iterator[None]:
    register_format(FORMAT)  # the one registry line
    yield
    unregister_format("toy")


def test_builtin_formats_in_order() -> None:
    assert engines.FORMATS == ("sglang", "trtllm", "eplb", "vllm-ascend")
    assert [f.name for f in engines.formats()] == list(engines.FORMATS)


def test_a_new_format_is_one_module_and_one_line(toy, named_plan, tmp_path) -> None:
    plan: Plan = named_plan("single")
    # CLI choices and help come from the registry
    r = CliRunner().invoke(main, ["export", "--help"])
    assert r.exit_code == 0, r.output
    assert "[sglang|trtllm|eplb|vllm-ascend|toy]" in r.stdout
    assert "toy          the Toy engine's --placement (.toy)" in r.stdout
    assert "toy" in engines.FORMATS
    # export and import go through it; its files are a known kind
    plan.save(tmp_path / "plan.json")
    r = CliRunner().invoke(main, ["export", str(tmp_path / "plan.json"), "--format", "toy",
                                  "-o", str(tmp_path / "p.toy")])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [f"wrote {tmp_path / 'p.toy'}: Toy map, {plan.num_layers} layers",
                                     f"toy-serve --placement {tmp_path / 'p.toy'}"]
    back = import_plan(tmp_path / "p.toy", plan.cluster).plan
    assert back.phy2log.tolist() == plan.phy2log.tolist()
    kind = identify(tmp_path / "p.toy")
    assert kind is not None and kind.role == "engine" and kind.name == "toy"
    r = CliRunner().invoke(main, ["export", str(tmp_path / "plan.json"), "--format", "toy",
                                  "-o", str(tmp_path / "p.json")])
    assert r.stderr == f"error: {tmp_path / 'p.json'}: --format toy needs a file ending in .toy.\n"


def test_unregistered_is_gone(named_plan, tmp_path) -> None:
    assert "toy" not in engines.FORMATS
    r = CliRunner().invoke(main, ["export", "x.json", "--format", "toy", "-o", "x.toy"])
    assert r.exit_code == 2
    with pytest.raises(Exception, match="Unknown engine format 'toy'"):
        engines.get_format("toy")
    assert Cluster(1, 2, 4)  # the fixtures above leave nothing behind
