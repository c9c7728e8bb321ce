"""One writer per unit: a file lock per unit directory, so processes sharing an ``output_root`` (NNI trials, two
launches of one config) train each unit once.

The lock is ``<unit>/.lock`` (``filelock``: an OS lock on the open file, which the OS drops when its process dies,
so a killed run never leaves a lock that blocks its resume). Its holder writes its pid, host and start time into
``<unit>/.lock-holder.json``, which a process that has to wait names in its log. Whoever takes the lock checks
again whether the unit finished meanwhile, and reuses the result if so. With several Accelerate processes only the
main one takes the lock; the others wait for it at a barrier. Locks are as good as the file system's: local disks
and most network file systems honour them, some NFS setups do not.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Iterator, Optional

from filelock import FileLock, Timeout

from .files import atomic_write_text

__all__ = ["LOCK_FILE", "HOLDER_FILE", "unit_lock"]
_log = logging.getLogger(__name__)
LOCK_FILE = ".lock"
HOLDER_FILE = ".lock-holder.json"
_REMIND_S = 600.0  # while waiting, say so again this often


@contextlib.contextmanager
def unit_lock(run_dir: Path, accelerator=None) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block (created if missing); waits, logging for whom, while another process
    holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / LOCK_FILE)) if accelerator is None or accelerator.is_main_process else None
    if lock is not None:
        _acquire(lock, run_dir)
    try:
        if accelerator is not None:
            accelerator.wait_for_everyone()
        yield
    finally:
        if lock is not None:
            with contextlib.suppress(FileNotFoundError):
                (run_dir / HOLDER_FILE).unlink()
            lock.release()


def _acquire(lock: FileLock, run_dir: Path) -> None:
    try:
        lock.acquire(timeout=0)
    except Timeout:
        start = time.monotonic()
        _log.info("%s is being worked on by %s; waiting for it (its result is then reused)", run_dir.name,
                  holder(run_dir) or "another process")
        while True:
            try:
                lock.acquire(timeout=_REMIND_S)
                break
            except Timeout:
                _log.info("still waiting for %s (held by %s)", run_dir.name, holder(run_dir) or "another process")
        _log.info("%s is free after %.0f s of waiting", run_dir.name, time.monotonic() - start)
    atomic_write_text(run_dir / HOLDER_FILE, json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}))


def holder(run_dir: Path) -> Optional[str]:
    """Who holds ``run_dir``'s lock, as its holder wrote it ('pid 123 on host-a since ...'), if it did."""
    try:
        who = json.loads((Path(run_dir) / HOLDER_FILE).read_text())
        return f"pid {who['pid']} on {who['host']} since {who['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return None
