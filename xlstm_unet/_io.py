"""Atomic writes: write a temporary file (or folder) next to the destination, then move it into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["atomic_write", "replace_path", "save_figure", "temp_file_beside"]


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temp_file_beside(final: str | os.PathLike, suffix: str = "") -> tuple[int, str]:
    """``tempfile.mkstemp`` in ``final``'s folder, with the permissions an ordinary new file would get.

    mkstemp creates files readable by their owner only (0600); after ``os.replace`` the result would keep that
    mode, so results written atomically would be unreadable by the rest of a research group.
    Returns ``(fd, path)`` like ``mkstemp``.
    """
    final = Path(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix, dir=final.parent)
    os.fchmod(fd, _default_file_mode())
    return fd, tmp


@contextlib.contextmanager
def atomic_write(final: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Write ``final`` all at once or not at all: yields an empty temporary file's path beside it.

    When the block finishes, the temporary file replaces ``final`` (``os.replace``); when it raises, the temporary
    file is removed and ``final`` is left as it was. The folder must exist. ``suffix`` ends the temporary name
    (for writers that pick a format from it). Nest two blocks to replace two files only when both are written::

        with atomic_write(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    """
    fd, name = temp_file_beside(final, suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def replace_path(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Move the finished file or folder ``src`` to ``dest`` (same file system), replacing what is there.

    An existing ``dest`` is renamed aside (``.<name>.old-<random>``) before ``src`` takes its place and removed
    only afterwards, so ``dest`` is always either the old or the new one, never half of each.
    """
    src, dest = Path(src), Path(dest)
    if not dest.exists():
        src.rename(dest)
        return
    old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:12]}"
    dest.rename(old)
    src.rename(dest)
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def save_figure(fig: Figure, stem: Path, dpi: int, formats: Sequence[str] = ("png", "pdf")) -> dict[str, Path]:
    """Write ``fig`` to ``<stem>.<ext>`` for each of ``formats`` atomically (temp file, then rename). The PDF has no
    creation date, so the same figure gives the same bytes (committed figures change only with their content)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = {}
    for ext in formats:
        final = stem.with_suffix(f".{ext}")
        with atomic_write(final, suffix=f".{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=dpi, bbox_inches="tight",
                        metadata={"CreationDate": None} if ext == "pdf" else None)
        out[ext] = final
    return out
