"""Atomic file writing."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_atomic_write_names_the_target_on_failure(tmp_path: Path) -> None:
    from placement._io import atomic_write_text

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError) as info:
        atomic_write_text(blocker / "out.json", "{}")
    assert info.value.filename == str(blocker / "out.json")
    assert "is not a directory" in str(info.value)
    atomic_write_text(tmp_path / "ok" / "out.json", "{}")
    assert (tmp_path / "ok" / "out.json").read_text() == "{}"
    assert [p.name for p in (tmp_path / "ok").iterdir()] == ["out.json"]
