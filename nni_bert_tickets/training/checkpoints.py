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
from typing import Any, Dict, Mapping, Optional

from safetensors.torch import save_file

from ..core.files import atomic_write_text, no_space_error

__all__ = ["PROGRESS", "read_progress", "save_checkpoint", "clear_checkpoint"]
_log = logging.getLogger(__name__)
PROGRESS = "progress.json"


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
