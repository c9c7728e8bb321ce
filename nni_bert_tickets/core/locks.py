"""One writer per unit: a file lock per unit directory, so processes sharing an ``output_root`` (NNI trials, two
launches of one config) train each unit once.

The lock is ``<unit>/.lock`` (``filelock``: an OS lock on the open file, which the OS drops when its process dies,
so a killed run never leaves a lock that blocks its resume). Its holder writes its pid, host and start time into
``<unit>/.lock-holder.json``, which a process that has to wait names in its log. Whoever takes the lock checks
again whether the unit finished meanwhile, and reuses the result if so. With several Accelerate processes only the
main one takes the lock; the others wait for it at a barrier. Locks are as good as the file system's: local disks
and most network file systems honour them, some NFS setups do not.

Where a table has independent units (seeds, baselines, transfer cells), :func:`free_first` works through the ones no
other process holds before it waits for any: two processes started on one config share its units between them
rather than one waiting out the other's. (Not with several Accelerate processes, which stay in step: they wait.)
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, TypeVar

from filelock import FileLock, Timeout

from .files import atomic_write_text

__all__ = ["LOCK_FILE", "HOLDER_FILE", "unit_lock", "free_first", "UnitBusy"]
_log = logging.getLogger(__name__)
LOCK_FILE = ".lock"
HOLDER_FILE = ".lock-holder.json"
_REMIND_S = 600.0  # while waiting, say so again this often
_SKIP_BUSY = contextvars.ContextVar("skip_busy_units", default=False)  # set by free_first's first pass
T = TypeVar("T")
R = TypeVar("R")


class UnitBusy(RuntimeError):
    """A unit another process holds, met on :func:`free_first`'s first pass (which comes back to it)."""

    def __init__(self, run_dir: Path):
        super().__init__(f"{run_dir} is being worked on by {holder(run_dir) or 'another process'}")
        self.run_dir = run_dir


def free_first(items: Sequence[T], work: Callable[[T], R]) -> List[R]:
    """``[work(item) for item in items]``, but an item whose unit (or any unit it needs) another process holds is
    put off until the others are done, and then waited for. ``work`` must be safe to start again: a unit's
    result is stored once it is computed, so an item put off halfway redoes nothing."""
    results, later = {}, []
    token = _SKIP_BUSY.set(True)
    try:
        for i, item in enumerate(items):
            try:
                results[i] = work(item)
            except UnitBusy as busy:
                _log.info("%s; going on to the next unit and coming back to it", busy)
                later.append(i)
    finally:
        _SKIP_BUSY.reset(token)
    for i in later:
        results[i] = work(items[i])
    return [results[i] for i in range(len(items))]


@contextlib.contextmanager
def unit_lock(run_dir: Path, accelerator=None) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block (created if missing); waits, logging for whom, while another process
    holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / LOCK_FILE)) if accelerator is None or accelerator.is_main_process else None
    if lock is not None:  # processes in step (Accelerate) cannot skip a unit alone: they wait
        _acquire(lock, run_dir, skip=_SKIP_BUSY.get() and (accelerator is None or accelerator.num_processes == 1))
    try:
        if accelerator is not None:
            accelerator.wait_for_everyone()
        yield
    finally:
        if lock is not None:
            with contextlib.suppress(FileNotFoundError):
                (run_dir / HOLDER_FILE).unlink()
            lock.release()


def _acquire(lock: FileLock, run_dir: Path, skip: bool = False) -> None:
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if skip:
            raise UnitBusy(run_dir) from None
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
