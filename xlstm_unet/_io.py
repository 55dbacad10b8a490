"""Temporary files for atomic writes (write next to the destination, then ``os.replace``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["temp_file_beside"]


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
