"""Files written whole or not at all: a temporary file beside the target, renamed into place."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from typing import Any, Callable, Optional

__all__ = ["atomic_write", "atomic_write_text", "no_space_error", "remove_stale_temporaries"]
_TMP_PREFIX = ".tmp-"
_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any], size: Optional[int] = None) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place; on failure nothing
    is left behind and a previous ``path`` is untouched. Unique per call, so data-parallel ranks writing the same
    file do not collide. ``size`` (bytes, about): what the file needs, named when the disk is full."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=_TMP_PREFIX)
    os.close(fd)
    try:
        try:
            write(tmp)
        except OSError as err:
            if err.errno in _NO_SPACE:
                raise no_space_error(path, folder, size, os.path.getsize(tmp) if os.path.exists(tmp) else 0) from err
            raise
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; a ticket is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def no_space_error(path: str, folder: str, size: Optional[int], written: int) -> OSError:
    """An ENOSPC error that says which file could not be written, how much it needed and how much is free."""
    free = shutil.disk_usage(folder).free
    need = (f"it needs about {_mb(size)}" if size is not None
            else f"at least {_mb(written)} were written before the disk filled")
    return OSError(errno.ENOSPC, f"no space left on the device to write {path}: {need}, and {_mb(free)} are free "
                                 f"in {folder}; what was there before is unchanged. Free some space and run again")


def _mb(n: int) -> str:
    return f"{n} bytes" if n < 10**6 else f"{n / 1e6:.1f} MB ({n} bytes)"


def _read_umask() -> int:
    mask = os.umask(0o022)  # read once, at import: setting it is the only way to read it
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    data = text.encode()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    atomic_write(path, write, size=len(data))


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Delete the temporary files a process killed mid-write (SIGKILL: no clean-up runs) left in ``folder``. Only
    for a writer that holds the folder's lock (:func:`~.locks.unit_lock`), before it writes: another writer's
    temporary file would be in use."""
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith(_TMP_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))
