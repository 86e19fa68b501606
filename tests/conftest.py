"""Fixtures shared by every test area.

Real data (router traces of real models, the engines' reference outputs) is not shipped: it lives
in a folder ``shared/`` beside the checkout (``../shared``; ``PLACEMENT_SHARED_DIR`` points
elsewhere). A test that needs it asks through one of these, never by building the path itself:

* ``real_data("traces/deepseek_v3_sglang")`` (fixture): the path, or a SKIP naming what is
  missing and how CI gets it;
* ``shared_dir`` (fixture): the folder itself (skips when ``shared/traces`` is missing);
* ``@pytest.mark.needs_shared("traces/x.npz", ...)``: skips the test unless every path exists;
  for module-level parametrisation, :func:`shared_path` gives the path without checking it.

Everything such a test covers that needs no real data is also covered on shipped data
(``bundled:NAME``, among them the real FLAME-MoE trace, ``bundled:flame-moe``) or generated data.
With ``PLACEMENT_REQUIRE_SHARED=1`` (CI sets it when ``../shared`` is present) a missing file
fails the test instead: CI never silently skips real-data tests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from shared_data import (  # the real-data folder and its checks (tests/shared_data.py)
    HOW_CI_GETS_IT,
    REPO,
    SHARED,
    SKIP_PREFIX,
    require_shared,
)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs_shared"):
        require_shared(*(mark.args or ("traces",)))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    """One line with how many real-data tests were skipped (and why), under the -ra list."""
    skipped = terminalreporter.stats.get("skipped", [])
    real = [r for r in skipped if SKIP_PREFIX in str(getattr(r, "longrepr", ""))]
    if real:
        terminalreporter.write_line(
            f"real-data tests: {len(real)} skipped, {SHARED} is missing or incomplete "
            f"({HOW_CI_GETS_IT}); everything else runs on shipped or generated data")
    elif SHARED.is_dir():
        terminalreporter.write_line(f"real-data tests: none skipped (real data at {SHARED})")


@pytest.fixture(scope="session")
def repo_dir() -> Path:
    """The repository root."""
    return REPO


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The real-data folder (``../shared``: ``traces/``, ``reference/``); skips when absent."""
    require_shared("traces")
    return SHARED


@pytest.fixture(scope="session")
def real_data() -> Callable[..., Path]:
    """``real_data("traces/deepseek_v3_sglang", ...)`` -> the path of the first argument under
    the real-data folder; skips the test (one line: what is missing, how CI gets it) unless every
    argument exists."""
    return require_shared


@pytest.fixture(scope="session")
def real_trace() -> Callable[[str], Path]:
    """``real_trace("deepseek_v3_sglang/prefill_in512.json")`` -> ``shared/traces/NAME``, or
    skip. The FLAME-MoE trace ships with the package: use ``bundled:flame-moe`` instead."""
    return lambda name: require_shared(f"traces/{name}")


def write_sglang_logical_counts(out_dir: Path, source: str = "bundled:deepseek-v3-workloads") -> Path:
    """SGLang ``logical_count`` JSON files (what its expert-distribution recorder dumps and
    ``--init-expert-location`` takes) of ``source``'s windows, one file per window named after it:
    ``{"logical_count": [num_hidden_layers][E]}``, the dense layers' rows zero."""
    import json

    import numpy as np

    from placement.routing_traces import load_trace

    trace = load_trace(source)
    counts = trace.window_counts()
    out_dir.mkdir(parents=True, exist_ok=True)
    for w, name in enumerate(trace.window_names):
        rows = np.zeros((trace.num_hidden_layers or int(trace.layer_ids[-1]) + 1,
                         trace.num_experts), dtype=np.int64)
        rows[np.asarray(trace.layer_ids)] = np.rint(counts[w]).astype(np.int64)
        (out_dir / f"{name}.json").write_text(json.dumps({"logical_count": rows.tolist()}))
    return out_dir


@pytest.fixture(scope="session")
def sglang_counts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of six SGLang ``logical_count`` JSON files of DeepSeek-V3 (``w0.json`` ..
    ``w5.json``: 61 rows, rows 0-2 dense and zero, x 256 experts), made from the shipped
    ``bundled:deepseek-v3-workloads``: the shape of the real DeepSeek-V3 SGLang files."""
    return write_sglang_logical_counts(tmp_path_factory.mktemp("sglang_counts"))


@pytest.fixture(params=["bundled", "real"])
def deepseek_counts_dir(request: pytest.FixtureRequest) -> Path:
    """A directory of DeepSeek-V3 SGLang ``logical_count`` files, twice: made from shipped data
    (:func:`sglang_counts_dir`, 6 files) and the real ones (``traces/deepseek_v3_sglang``, 12
    files; skips when absent)."""
    if request.param == "real":
        return require_shared("traces/deepseek_v3_sglang")
    return request.getfixturevalue("sglang_counts_dir")


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray of 2 CPUs, started once for the session (``placement.parallel.Ray()`` backends
    use it; the CLI's ``shutdown_ray`` leaves it running: this fixture started it)."""
    ray = pytest.importorskip("ray")
    from placement.parallel import ray_init_args

    if not ray.is_initialized():
        ray.init(**ray_init_args(2))
    yield ray
    ray.shutdown()
