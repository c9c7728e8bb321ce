"""IMP's dense round, trained once and shared: round 0 of every run that starts from the same model, seed, data and
training settings is the same fine-tuning, whatever the run's rewind point or target sparsity (Table 3's θ0 and θi
rows, standard pruning and Table 2's IMP run). :class:`DenseRound` is a folder holding that round:

- ``dense_end.safetensors``: every parameter at the end of round 0, with the round's result (metric, metrics and
  steps record) in its header;
- ``theta_i-<rewind>.safetensors``: the snapshot θi of each rewind point asked for, written as soon as it is taken
  (a round killed after it and trained again keeps it).

Each file is written whole or not at all (:mod:`.files`), safetensors without pickle, and records a fingerprint of
the model and seed the round started from; a file from another start is refused. The caller names the folder by
the settings round 0 depends on (``nni_bert_tickets.experiments.imp_run`` hashes them); one process at a time
trains it (:func:`~.locks.unit_lock`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .files import atomic_write, remove_stale_temporaries
from .imp_state import is_main_process, unwrapped_name
from .locks import unit_lock
from .rewind import Rewind

__all__ = ["DenseRound", "start_fingerprint"]
FORMAT = "nni_bert_tickets.dense_round/1"
END_FILE = "dense_end.safetensors"
SNAPSHOT_FILE = "theta_i-{}.safetensors"
_log = logging.getLogger(__name__)
Result = Tuple[Optional[float], Dict[str, Any], Dict[str, Any]]  # metric, metrics, steps record


def start_fingerprint(model: torch.nn.Module, seed: int) -> str:
    """sha256 of the seed and every parameter (names unwrapped, dtypes, shapes, bytes) before round 0."""
    digest = hashlib.sha256(f"seed={seed};".encode())
    for name, param in sorted((unwrapped_name(n), p) for n, p in model.named_parameters()):
        value = param.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


class DenseRound:
    """The folder of one shared dense round. ``rewinds``: the θi points (:class:`~.rewind.Rewind` values; θ0 and
    standard pruning need no snapshot and are left out) whose snapshots a training of the round takes, besides
    the one of the run training it. ``accelerator``: with several processes, only the main one writes, and the
    folder's lock is taken as :func:`~.locks.unit_lock` does."""

    def __init__(self, folder: str | Path, rewinds: Iterable[Any] = (), accelerator=None):
        self.folder, self.accelerator = Path(folder), accelerator
        self.rewinds: List[Rewind] = []
        for value in rewinds:
            point = Rewind.parse(value)
            if point.to_theta_i and point not in self.rewinds:
                self.rewinds.append(point)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's lock: one process trains the round, the others then read it."""
        with unit_lock(self.folder, self.accelerator):
            if is_main_process():
                remove_stale_temporaries(self.folder)  # left by a process killed mid-write
            yield

    def wanted(self, own: Rewind) -> List[Rewind]:
        """The snapshots a training of the round takes for a run rewinding to ``own``."""
        return self.rewinds + ([own] if own.to_theta_i and own not in self.rewinds else [])

    def snapshot_path(self, point: Rewind) -> Path:
        return self.folder / SNAPSHOT_FILE.format(point.value)

    def holds(self, own: Rewind) -> bool:
        """Whether the round is here with what a run rewinding to ``own`` needs (its θi, if any)."""
        return (self.folder / END_FILE).exists() and (not own.to_theta_i or self.snapshot_path(own).exists())

    def missing(self, own: Rewind) -> List[Rewind]:
        return [point for point in self.wanted(own) if not self.snapshot_path(point).exists()]

    # ---- reading -----------------------------------------------------------------------------------------------
    def load(self, model: torch.nn.Module, start: str) -> Result:
        """Put round 0's trained parameters into ``model``; returns its result."""
        tensors, header = self._read(self.folder / END_FILE, start)
        live = {unwrapped_name(n): p for n, p in model.named_parameters()}
        if set(tensors) != set(live):
            raise ValueError(f"{self.folder / END_FILE} does not fit this model (differs in "
                             f"{sorted(set(tensors) ^ set(live))[:3]})")
        with torch.no_grad():
            for name, value in tensors.items():
                live[name].copy_(value)
        result = json.loads(header["result"])
        _log.info("round 0 read back from the shared dense round %s (not trained again)", self.folder)
        return result["metric"], result["metrics"], result["steps"]

    def snapshot(self, point: Rewind, model: torch.nn.Module, start: str) -> Dict[str, torch.Tensor]:
        """θi for ``point``, keyed by ``model``'s own parameter names (as the pruner keeps its rewind state)."""
        tensors, _ = self._read(self.snapshot_path(point), start)
        names = {unwrapped_name(n): (n, p) for n, p in model.named_parameters()}
        if set(tensors) != set(names):
            raise ValueError(f"{self.snapshot_path(point)} does not fit this model")
        return {names[k][0]: v.to(names[k][1].device) for k, v in tensors.items()}

    def _read(self, path: Path, start: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
            tensors = load_file(str(path))
        except Exception as err:  # safetensors' errors differ in type; all mean unreadable
            raise ValueError(f"{path} is unreadable (truncated or corrupt: {type(err).__name__}: {err}); delete it "
                             "and the round is trained again") from err
        if header.get("format") != FORMAT:
            raise ValueError(f"{path} is in format {header.get('format')!r}; this version reads {FORMAT!r}")
        if header.get("start") != start:
            raise ValueError(f"{path} holds a dense round started from another model or seed than this run's; "
                             f"give each model, seed and training setup its own folder (not {self.folder})")
        return tensors, header

    # ---- writing -----------------------------------------------------------------------------------------------
    def capture(self, steps: Dict[Rewind, int], model: torch.nn.Module, start: str,
                current_step: Optional[Callable[[], int]]) -> Callable[[], None]:
        """An after-optimizer-step task writing θ_step for each rewind point in ``steps`` ({point: step}) that the
        folder lacks. ``current_step`` tells which step just finished (else calls are counted)."""
        todo = {point: step for point, step in steps.items() if not self.snapshot_path(point).exists()}
        counter = {"steps": 0}

        def task() -> None:
            counter["steps"] += 1
            now = current_step() if current_step is not None else counter["steps"]
            for point, step in list(todo.items()):
                if now >= step:  # >=: a step skipped by a mixed-precision scaler runs no task
                    self._write(self.snapshot_path(point), _params(model), start)
                    del todo[point]
        return task

    def save(self, model: torch.nn.Module, result: Result, start: str) -> None:
        """Round 0's trained parameters and result."""
        metric, metrics, steps = result
        self._write(self.folder / END_FILE, _params(model), start,
                    result=json.dumps({"metric": metric, "metrics": metrics, "steps": steps}, default=str))

    def _write(self, path: Path, tensors: Dict[str, torch.Tensor], start: str, **header: str) -> None:
        if is_main_process():
            meta = {"format": FORMAT, "start": start, **header}
            atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta),
                         size=sum(t.numel() * t.element_size() for t in tensors.values()))


def _params(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    # cloned to the CPU: tied weights share memory, which safetensors refuses
    return {unwrapped_name(n): p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters()}
