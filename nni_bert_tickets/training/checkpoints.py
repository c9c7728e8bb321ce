"""Step checkpoints of the training loop: Accelerate ``save_state`` into a temporary folder swapped in whole.

A checkpoint folder holds Accelerate's state (model, optimizer, scheduler, RNGs), any extra state objects (an
early-stop watch) as safetensors, and ``progress.json`` (step, total steps, data-order seed), written last: its
presence means the checkpoint is complete. ``<folder>.old`` holds the previous checkpoint only while a newer one
is being swapped in, so a kill at any moment leaves one whole checkpoint.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import threading
import time
from typing import Any, Dict, Mapping, Optional

from safetensors.torch import save_file

from ..core.files import atomic_write_text, no_space_error

__all__ = ["PROGRESS", "TERM_GRACE_S", "SigtermWatch", "read_progress", "save_checkpoint", "clear_checkpoint"]
_log = logging.getLogger(__name__)
PROGRESS = "progress.json"
# Slurm, Kubernetes and nnictl send SIGKILL some time after SIGTERM (Slurm's KillWait and Kubernetes' grace period
# default to 30 s): a checkpoint is saved on the way out only if the step in progress ended and the save (as long
# as the last one took) ends within this many seconds of the signal.
TERM_GRACE_S = 20.0


def read_progress(folder: Optional[str], total: int) -> Optional[Dict[str, Any]]:
    """The saved progress (``step``, ``data_seed``, ``folder``) of a run of ``total`` steps, if there is one."""
    if not folder:
        return None
    for candidate in (folder, f"{folder}.old"):
        path = os.path.join(candidate, PROGRESS)
        if os.path.isfile(path):
            with open(path) as f:
                progress = json.load(f)
            if progress.get("total") == total:
                return {**progress, "folder": candidate}
            _log.warning("ignoring the step checkpoint in %s: it is for a run of %s steps, not %d",
                         candidate, progress.get("total"), total)
    return None


def save_checkpoint(accelerator, folder: str, progress: Dict[str, Any], extras: Mapping[str, Any]) -> None:
    """Save into ``<folder>.tmp``, then swap it in: a kill at any point leaves a whole checkpoint."""
    tmp, old = f"{folder}.tmp", f"{folder}.old"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            for name, extra in extras.items():
                save_file({k: v.contiguous() for k, v in extra.state_dict().items()},
                          os.path.join(tmp, f"extra-{name}.safetensors"))
            atomic_write_text(os.path.join(tmp, PROGRESS), json.dumps(progress))  # last: its presence means complete
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        written = _size(tmp)
        shutil.rmtree(tmp, ignore_errors=True)  # the previous checkpoint, if any, stays the one to resume from
        previous = _size(folder) if os.path.isdir(folder) else None
        raise no_space_error(tmp, os.path.dirname(os.path.abspath(folder)), previous, written) from err
    if accelerator.is_main_process:
        if os.path.isdir(folder):
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


class SigtermWatch:
    """While active (in the main thread), SIGTERM is noted instead of ending the process at once, so the training
    loop can save a step checkpoint after the step in progress and then :meth:`terminate`. On leaving, a noted
    signal is passed on: the process ends as SIGTERM would have ended it (or its earlier handler runs)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: Optional[float] = None  # time.monotonic() of the signal
        self._previous: Any = None

    def __enter__(self) -> "SigtermWatch":
        if self.enabled:
            self._previous = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._note)
        return self

    def _note(self, signum, frame) -> None:
        if self.received is None:
            self.received = time.monotonic()
            _log.warning("SIGTERM received: stopping after the step in progress")

    @property
    def pending(self) -> bool:
        """A SIGTERM was noted and not yet passed on."""
        return self.enabled and self.received is not None

    def in_time(self, save_s: float) -> bool:
        """Whether a save taking about ``save_s`` seconds would end within :data:`TERM_GRACE_S` of the signal."""
        return self.received is not None and time.monotonic() - self.received + save_s <= TERM_GRACE_S

    def terminate(self) -> None:
        """Put the earlier handler back and raise the noted signal again under it."""
        if self.enabled:
            self.enabled = False
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self._previous is None else self._previous)
            if self.received is not None:
                signal.raise_signal(signal.SIGTERM)

    def __exit__(self, *exc: Any) -> None:
        self.terminate()


def _size(folder: str) -> int:
    """Bytes of the files under ``folder`` (what a checkpoint of the same run needs again)."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def clear_checkpoint(accelerator, folder: Optional[str]) -> None:
    """Remove a finished run's checkpoint (progress files first, so a half-deleted folder is never used)."""
    if folder and accelerator.is_main_process:
        for candidate in (folder, f"{folder}.old", f"{folder}.tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(candidate, PROGRESS))
            shutil.rmtree(candidate, ignore_errors=True)
    accelerator.wait_for_everyone()
