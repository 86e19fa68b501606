"""Layer specs and the layer-layout rules shared by every engine format."""

from __future__ import annotations

import numpy as np
import pytest

from placement.engines import format_ids, parse_layer_spec, resolve_layout, trivial_row
from placement.errors import InputError, PlanError


@pytest.mark.parametrize(
    ("spec", "ids"),
    [("3-6", (3, 4, 5, 6)), ("0,1,2", (0, 1, 2)), ("5, 0-1", (0, 1, 5)), ("7", (7,)),
     ([4, 2], (2, 4)), (None, None)],
)
def test_parse_layer_spec(spec, ids):
    assert parse_layer_spec(spec) == ids


@pytest.mark.parametrize("spec", ["a-b", "6-3", "1,1", "-1", "3-", "1;2"])
def test_parse_layer_spec_refuses(spec):
    with pytest.raises(InputError):
        parse_layer_spec(spec)


@pytest.mark.parametrize(
    ("ids", "text"),
    [([], "none"), ([3], "3"), ([0, 1, 2, 5, 7, 8], "0-2, 5, 7-8"), ([9, 3, 4], "3-4, 9")],
)
def test_format_ids(ids, text):
    assert format_ids(ids) == text


def test_trivial_row_is_arange_mod_e():
    assert trivial_row(10, 4).tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]


def test_layout_deepseek_dense_prefix_is_inferred():
    lay = resolve_layout(np.arange(3, 61), num_hidden_layers=61, dense_layers=None)
    assert lay.dense == (0, 1, 2) and lay.dense_inferred and lay.filled == ()
    assert lay.moe == tuple(range(3, 61)) and not lay.moe_assumed


def test_layout_missing_moe_layers_is_an_error_naming_the_options():
    with pytest.raises(PlanError, match=r"decoder layers 10-60 of 61.*--fill-missing trivial"):
        resolve_layout(np.arange(3, 10), num_hidden_layers=61, dense_layers=None)


def test_layout_fill_missing_trivial():
    lay = resolve_layout(np.arange(3, 10), num_hidden_layers=12, dense_layers=None,
                         fill_missing="trivial")
    assert lay.filled == (10, 11) and lay.moe == tuple(range(3, 12))
    assert any("10-11" in n for n in lay.notes("X"))


def test_layout_declared_dense_layers_interleaved():
    lay = resolve_layout([1, 3, 5], num_hidden_layers=6, dense_layers=[0, 2, 4])
    assert lay.dense == (0, 2, 4) and not lay.dense_inferred and lay.filled == ()


def test_layout_dense_layer_that_is_planned_is_refused():
    with pytest.raises(PlanError, match="declared dense"):
        resolve_layout([1, 2], num_hidden_layers=3, dense_layers=[2])


def test_layout_without_num_hidden_layers():
    lay = resolve_layout([0, 1, 2], num_hidden_layers=None, dense_layers=None,
                         need_num_hidden_layers=True)
    assert lay.num_hidden_layers == 3
    lay = resolve_layout([3, 4], num_hidden_layers=None, dense_layers=None)
    assert lay.moe_assumed and lay.num_hidden_layers is None
    with pytest.raises(PlanError, match="--num-hidden-layers"):
        resolve_layout([3, 4], num_hidden_layers=None, dense_layers=None,
                       need_num_hidden_layers=True)
    lay = resolve_layout([3, 4], num_hidden_layers=None, dense_layers=[0, 1, 2],
                         need_num_hidden_layers=True)
    assert lay.num_hidden_layers == 5


def test_layout_rejects_bad_fill_choice():
    with pytest.raises(InputError, match="fill_missing"):
        resolve_layout([0], num_hidden_layers=1, dense_layers=None, fill_missing="zeros")
