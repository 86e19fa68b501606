"""Where the real data is (not shipped: ``../shared`` beside the checkout, or
``PLACEMENT_SHARED_DIR``) and how a test asks for it; the fixtures of ``tests/conftest.py`` wrap
these. Import it as ``from shared_data import shared_path`` (``tests/`` is on ``sys.path``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PLACEMENT_SHARED_DIR") or REPO.parent / "shared").resolve()
SKIP_PREFIX = "real data not here:"
HOW_CI_GETS_IT = ("not shipped with the package; CI has it as ../shared beside the checkout "
                  "(see docs/development.md, 'Real data')")


def shared_path(*parts: str) -> Path:
    """``SHARED / parts`` without checking that it exists (module-level parametrisation)."""
    return SHARED.joinpath(*parts)


def missing_shared(*parts: str) -> str | None:
    """The one-line skip reason when ``shared/PART`` is missing for some part, else None."""
    missing = [p for p in parts if not shared_path(p).exists()]
    if not missing:
        return None
    return f"{SKIP_PREFIX} {', '.join(str(shared_path(p)) for p in missing)} ({HOW_CI_GETS_IT})"


def require_shared(*parts: str) -> Path:
    """``shared/parts[0]`` (all of ``parts`` must exist), or skip the calling test with one line
    (fail instead under ``PLACEMENT_REQUIRE_SHARED=1``)."""
    reason = missing_shared(*parts)
    if reason is not None:
        if os.environ.get("PLACEMENT_REQUIRE_SHARED") == "1":
            pytest.fail(f"{reason}; PLACEMENT_REQUIRE_SHARED=1 forbids skipping real-data tests")
        # reported at the test's own line in the -ra summary (as a skipif mark is)
        raise pytest.skip.Exception(reason, _use_item_location=True)
    return shared_path(parts[0])
