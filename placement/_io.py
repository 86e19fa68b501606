"""File helpers: atomic writes (a file is written whole or not at all) and safe .npz reads."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import numpy as np

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text", "read_npz"]


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # name the file the user asked for, not our temporary one
        raise OSError(exc.errno, f"cannot write the file ({exc.strerror})", str(path)) from None
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        if "b" in mode:
            fh = os.fdopen(fd, mode)
        else:
            fh = os.fdopen(fd, mode, encoding=encoding)
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb", encoding=None) as fh:
        fh.write(data)


def read_npz(
    path: Path, error: Callable[[str, Path], Exception], raw: bytes | None = None
) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (``raw`` bytes when given, else the file ``path``), loaded with
    ``allow_pickle=False``; anything unreadable raises ``error(message, path)``."""
    try:
        with np.load(io.BytesIO(raw) if raw is not None else path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise error(
                "holds pickled Python objects; refusing to load them (allow_pickle=False).", path
            ) from None
        raise error(f"not a readable .npz archive ({exc}).", path) from None
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise error(f"not a readable .npz archive (truncated or corrupt: {exc}).", path) from None
