"""What a path given as an input really is, so a message can say so instead of "no such file".

Only os.stat/lstat are used: opening a FIFO to look at it would block until a writer appears.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def not_a_file(path: str | Path) -> str | None:
    """None when `path` is a regular file that can be read; otherwise what it is instead."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        return _stat_failure(path, e)
    if stat.S_ISREG(st.st_mode):
        return None if os.access(path, os.R_OK) else "a file that cannot be read (permission denied)"
    return f"{_kind(st.st_mode)}, not a file"


def not_a_folder(path: str | Path) -> str | None:
    """None when `path` is a folder; otherwise what it is instead."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        return _stat_failure(path, e)
    return None if stat.S_ISDIR(st.st_mode) else f"{_kind(st.st_mode)}, not a folder"


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _stat_failure(path: Path, e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "a symbolic link loop (the link points back to itself)"
    if e.errno == errno.ENOENT and os.path.islink(path):
        return f"a broken symbolic link (to {os.readlink(path)}, which does not exist)"
    if e.errno == errno.ENOENT:
        return "no such file or folder"
    if e.errno == errno.ENOTDIR:
        return "no such file or folder (a part of the path is a file)"
    if e.errno == errno.EACCES:
        return "not reachable (permission denied on a folder of the path)"
    if e.errno == errno.ENAMETOOLONG:
        return "a name too long for the file system"
    return e.strerror or str(e)
