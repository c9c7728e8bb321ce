"""The resume state of an IMP run (``imp_state.safetensors``): what a killed run needs to go on, and no more.

After a round with rewinding, the body (everything outside the task head) is the rewind point with the next
round's mask applied, so the state holds only the masks (packed 8 per byte), the head's current values and the
head's rewind values; on resume the body is rebuilt from the rewind point. θ0 comes from the model passed to
the resumed :class:`~nni_bert_tickets.IMPPruner` (the caller loads it afresh from the base checkpoint), checked
against a fingerprint of every body parameter recorded with the run, so a checkpoint whose weights changed is
refused; θi is stored (``rewind/``), as it cannot be recomputed. After the last round, and in standard pruning
(no rewind point), the state holds every parameter. States written by version 0.1.0 (the whole ``state_dict``
plus a whole copy of the rewind point) still resume.
"""
from __future__ import annotations

import hashlib
import json
import dataclasses
import logging
import os
import shutil
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from . import masks as M
from .files import atomic_write, atomic_write_text
from .rewind import Rewind
from .targets import base_prefix
from .ticket import Ticket

__all__ = ["RunStore", "Saved", "STATE_FORMAT", "BEFORE_LAST_FILE", "ticket_file", "state_tensors", "restore_state",
           "head_names", "body_fingerprint", "rewind_params"]
STATE_FORMAT = "nni_bert_tickets.imp_state/2"
STATE_FILE = "imp_state.safetensors"  # the masks, task head, rewind point and trajectory after the last round
THETA_I_FILE = "theta_i.safetensors"  # the θi snapshot, written as soon as it is taken
# a θi run's state before its last round, kept once the run is finished: its last ticket, the only file with θi and
# the last mask, is as large as the model and may not travel; from this state the last round trains again
BEFORE_LAST_FILE = "imp_state-before-last.safetensors"
TICKET_FILE = "ticket-round{:02d}.safetensors"  # each round's ticket, by round number
_SETTINGS_0_1 = ("levels", "schedule", "step", "rewind", "head", "seed")  # what version 0.1.0 recorded
_log = logging.getLogger(__name__)


Masks = Dict[str, Dict[str, Any]]  # NNI's target spaces: {module: {target: space with .mask and .target}}
Tensors = Dict[str, torch.Tensor]


# ---- the model's side: what a round leaves in the model, as tensors, and back ---------------------------------------
def head_names(model: torch.nn.Module) -> Set[str]:
    """The task head's parameter names (everything outside the model body)."""
    prefix = base_prefix(model)
    return {n for n, _ in model.named_parameters() if prefix and not n.startswith(prefix)}


def body_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the names, dtypes, shapes and bytes of every body parameter: all that θ0 rewinding restores
    from the model (embeddings, LayerNorm and biases as well as the prunable matrices)."""
    head, digest = head_names(model), hashlib.sha256()
    body = sorted((unwrapped_name(n), p) for n, p in model.named_parameters() if n not in head)
    for name, param in body:
        value = param.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def rewind_params(model: torch.nn.Module, target_spaces: Masks, rewind_state: Tensors, names: Iterable[str]) -> None:
    """Copy the rewind point into the named parameters, then zero the pruned weights again."""
    live = dict(model.named_parameters())
    with torch.no_grad():
        for name in names:
            live[name].copy_(rewind_state[name])
        for spaces in target_spaces.values():  # survivors only: pruned weights stay exactly 0
            for space in spaces.values():
                if space.mask is not None:
                    space.target.masked_fill_(~space.mask.bool(), 0.0)


def _plain_buffers(model: torch.nn.Module, target_spaces: Masks) -> Tensors:
    """The model's persistent buffers, less NNI's: its masks (saved packed) and its per-forward copies of the
    masked weights (recomputed by the next forward)."""
    params = {id(p) for p in model.parameters()}
    nni = {f"{m}.{t}" for m, spaces in target_spaces.items() for t in spaces} | \
          {f"{m}._nni_wrapper.{t}_mask" for m, spaces in target_spaces.items() for t in spaces}
    return {n: b for n, b in model.state_dict(keep_vars=True).items()
            if id(b) not in params and n not in nni and b is not None}


def state_tensors(model: torch.nn.Module, target_spaces: Masks, *, rewind: Rewind, rewind_state: Optional[Tensors],
                  base_model: str, final: bool, head0: Optional[Tensors] = None) -> Tuple[Tensors, Dict[str, str]]:
    """The tensors and header entries of the state written after a round (``final``: the last one). A θi run also
    stores the head as round 0 started (``head0``): with θ0 from the model, what training round 0 again needs."""
    rewound = not rewind.standard and not final  # the body is the rewind point under the next mask
    head = head_names(model)
    params = {n: p for n, p in model.named_parameters() if not rewound or n in head}
    tensors = {f"model/{n}": v for n, v in {**params, **_plain_buffers(model, target_spaces)}.items()}
    # θ0 comes from the model and θi from its own file (THETA_I_FILE, or round 0 trained again up to step i): only the
    # head's rewind point is stored, so the state stays the size of the masks and the head (carried in git)
    tensors.update({f"rewind/{n}": v for n, v in (rewind_state or {}).items() if n in head})
    if rewind.to_theta_i:
        tensors.update({f"start/{n}": v for n, v in (head0 or {}).items()})
    masks = {f"{m}.{t}": s.mask for m, spaces in target_spaces.items() for t, s in spaces.items() if s.mask is not None}
    tensors.update({f"mask/{k}": M.pack_bits(m.bool()) for k, m in masks.items()})
    header = {"state": STATE_FORMAT, "body": "rewound" if rewound else "stored", "base_model": base_model,
              "mask_shapes": json.dumps({k: list(m.shape) for k, m in masks.items()}),
              **({"theta_i": "apart"} if rewind.to_theta_i else {})}
    # clone: tied weights share memory, which safetensors refuses
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}, header


def restore_state(model: torch.nn.Module, target_spaces: Masks, update_masks: Callable[[Masks], None],
                  state: Tensors, header: Dict[str, str], *, rewind: Rewind, rewind_state: Optional[Tensors],
                  where: str) -> Optional[Tensors]:
    """Put the model and the masks back as :func:`state_tensors` saved them; returns the rewind point (θ0 as
    taken from the model with the saved head merged in, or the stored θi)."""
    if "state" not in header:  # version 0.1.0: the whole state_dict and the whole rewind point
        model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model/")})
        return {k[7:]: v for k, v in state.items() if k.startswith("rewind/")} or rewind_state
    if header["state"] != STATE_FORMAT:
        raise ValueError(f"{where} is in format {header['state']!r}, written by a newer nni_bert_tickets; "
                         f"this one reads {STATE_FORMAT!r}")
    saved_rewind = {k[7:]: v for k, v in state.items() if k.startswith("rewind/")}
    if saved_rewind:  # the head's, merged into θ0 as taken from the model or θi as read apart; older θi states: all
        apart = rewind.to_theta0 or header.get("theta_i") == "apart"
        rewind_state = {**(rewind_state or {}), **saved_rewind} if apart else saved_rewind
    saved = {k[6:]: v for k, v in state.items() if k.startswith("model/")}
    masks = _saved_masks(target_spaces, state, json.loads(header["mask_shapes"]), where)
    params, head = dict(model.named_parameters()), head_names(model)
    live = {**params, **_plain_buffers(model, target_spaces)}
    rewound = [n for n in params if n not in head] if header.get("body") == "rewound" else []
    if rewound and rewind.to_theta0 and "base_body" not in json.loads(header.get("settings", "{}")):
        raise ValueError(f"{where} leaves θ0 to the model but records no fingerprint of it; it cannot be resumed")
    missing = sorted(set(params) - set(saved) - set(rewound))
    unknown = sorted(set(saved) - set(live))
    if missing or unknown or (rewound and any(n not in (rewind_state or {}) for n in rewound)):
        raise ValueError(f"{where} does not fit this model (missing {missing[:3]}, unknown {unknown[:3]}) or "
                         "lacks its rewind point")
    for name, value in saved.items():
        if tuple(value.shape) != tuple(live[name].shape):
            raise ValueError(f"{where}: {name} has shape {tuple(value.shape)}, the model {tuple(live[name].shape)}")
    with torch.no_grad():
        for name, value in saved.items():
            live[name].copy_(value)
    update_masks(masks)
    if rewound:
        rewind_params(model, target_spaces, rewind_state, rewound)
    return rewind_state


def _saved_masks(target_spaces: Masks, state: Tensors, shapes, where: str) -> Dict[str, Dict[str, torch.Tensor]]:
    out: Dict[str, Dict[str, torch.Tensor]] = {}
    for module_name, spaces in target_spaces.items():
        for target_name in spaces:
            key = f"{module_name}.{target_name}"
            if f"mask/{key}" not in state or key not in shapes:
                raise ValueError(f"{where} has no mask for {key}")
            try:
                mask = M.unpack_bits(state[f"mask/{key}"], shapes[key])
            except ValueError as err:
                raise ValueError(f"{where}: the packed mask {key} {err}: the file is cut short or corrupt") from err
            out.setdefault(module_name, {})[target_name] = mask.float()
    return out


# ---- the disk's side: the run's folder ---------------------------------------------------------------------------
@dataclasses.dataclass
class Saved:
    """What :meth:`RunStore.read` found: the rounds done, their tickets, and the state to restore."""
    trajectory: List[Dict[str, Any]]
    tickets: List[Ticket]
    state: Tensors
    header: Dict[str, str]


class RunStore:
    """An IMP run's folder: each round's ticket (:func:`ticket_file`), ``trajectory.json``, the resume state
    (``imp_state.safetensors``: state, trajectory and settings in one atomic write) and, in round 0 of a θi run,
    the θi snapshot. ``settings`` are what make the rounds what they are; a rerun under other settings is
    refused, naming them. ``base_model`` names the checkpoint the run started from (for that message)."""

    def __init__(self, output_dir: str, *, settings: Dict[str, Any], base_model: str):
        self.output_dir, self.settings, self.base_model = output_dir, settings, base_model
        self.where = f"the resume state in {output_dir}"

    def path(self, name: str) -> str:
        return os.path.join(self.output_dir, name)

    def save_theta_i(self, snapshot: Tensors) -> None:
        """Keep θi as soon as it is taken (a round 0 resumed past its step still needs it)."""
        if is_main_process():
            snapshot = {k: v.contiguous() for k, v in snapshot.items()}
            atomic_write(self.path(THETA_I_FILE), lambda tmp: save_file(snapshot, tmp))

    def keep_theta_i(self, snapshot: Tensors) -> None:
        """θi beside the state, which does not hold it: written once (one read from a dense round has no file yet)."""
        if not os.path.exists(self.path(THETA_I_FILE)):
            self.save_theta_i(snapshot)

    def read_theta_i(self) -> Optional[Tensors]:
        """The θi snapshot of a run killed in round 0, if there is one."""
        path = self.path(THETA_I_FILE)
        return self._read(path, lambda: load_file(path)) if os.path.exists(path) else None

    def write_round(self, level: int, ticket: Ticket, *, final: bool, trajectory: List[Dict[str, Any]],
                    state: Tensors, header: Dict[str, str]) -> None:
        """Round ``level``'s ticket, then its state with the trajectory and settings, then a readable trajectory."""
        os.makedirs(self.output_dir, exist_ok=True)
        # a θi ticket's rewind weights are the whole body: only the final ticket's file carries them
        ticket.save(self.path(ticket_file(level)), include_weights=final)
        # the trajectory rides in the state file's header: one atomic write holds both, so a kill cannot leave
        # a state of one round beside the trajectory of another
        header = {**header, "trajectory": json.dumps(trajectory, default=str), "settings": json.dumps(self.settings)}
        if final and header.get("theta_i") == "apart" and os.path.exists(self.path(STATE_FILE)):
            # the state after the round before (masks and head: small) outlives the run, to train the last again
            atomic_write(self.path(BEFORE_LAST_FILE), lambda tmp: shutil.copyfile(self.path(STATE_FILE), tmp))
        atomic_write(self.path(STATE_FILE), lambda tmp: save_file(state, tmp, metadata=header))
        atomic_write_text(self.path("trajectory.json"), json.dumps(trajectory, indent=1, default=str))  # a copy

    def read(self) -> Optional[Saved]:
        """The run saved here (None if none), after checking that it was made under the same settings."""
        path = self.path(STATE_FILE)
        if not os.path.exists(path):
            return None

        def metadata() -> Dict[str, str]:
            with safe_open(path, framework="pt") as f:
                return f.metadata() or {}

        def trajectory_copy() -> List[Dict[str, Any]]:
            with open(self.path("trajectory.json")) as f:
                return json.load(f)
        header = self._read(path, metadata)
        if "settings" in header:
            self._check_settings(self._read(path, lambda: json.loads(header["settings"])), header)
            trajectory = self._read(path, lambda: list(json.loads(header["trajectory"])))
        else:  # written by version 0.1.0 before the trajectory moved into the header
            _log.warning("%s is in the older resume format: its settings cannot be checked", path)
            trajectory = self._read(self.path("trajectory.json"), trajectory_copy)
        state = self._read(path, lambda: load_file(path))
        files = [self.path(ticket_file(r["round"])) for r in trajectory]
        tickets = [self._read(file, lambda file=file: Ticket.load(file)) for file in files]
        return Saved(trajectory, tickets, state, header)

    def _check_settings(self, saved: Dict[str, Any], header: Dict[str, str]) -> None:
        now = json.loads(json.dumps(self.settings))
        # files from before the task, the pruned set and the base weights were recorded lack those keys
        differ = sorted(k for k in now if (k in saved or k in _SETTINGS_0_1) and saved.get(k) != now[k])
        if set(differ) & {"base_weights", "base_body"}:
            then = header.get("base_model", "not recorded")
            raise ValueError(
                f"{self.output_dir} holds an IMP run started from other base weights than the model given now "
                f"({', '.join(differ)} differ): the run was started from {then!r}, this model is {self.base_model!r}. "
                "The resume state does not store θ0: the body is reloaded from the model passed in, which must be "
                "that checkpoint, unchanged and freshly loaded. Use another output_dir for another model")
        if differ:
            shown = {k: saved.get(k) for k in differ if k not in ("pruned", "base_weights")}
            raise ValueError(
                f"{self.output_dir} holds an IMP run with other settings ({', '.join(differ)} differ"
                + (f"; it has {shown}" if shown else "") + "): another task, model, pruned set or schedule. "
                "Use another output_dir, or the same settings to resume it")

    def _read(self, file: str, reader: Callable[[], Any]) -> Any:
        """``reader()`` of the file at path ``file``; a truncated or corrupt one is named, with the way to restart
        the run."""
        try:
            return reader()
        except Exception as err:  # safetensors, JSON and ticket errors differ in type; all mean unreadable
            raise ValueError(
                f"cannot resume the IMP run in {self.output_dir}: {file} is unreadable (truncated or corrupt: "
                f"{type(err).__name__}: {err}). Delete the folder {self.output_dir} (the run's imp/ folder) "
                "to restart the run from its first round") from err


def ticket_file(round_: int) -> str:
    """The file name of round ``round_``'s ticket in an IMP run's folder."""
    return TICKET_FILE.format(round_)


def unwrapped_name(name: str) -> str:
    return name.replace("._nni_wrapper", "")


def is_main_process() -> bool:
    return not torch.distributed.is_available() or not torch.distributed.is_initialized() \
        or torch.distributed.get_rank() == 0


# The name of the run-state class before 0.2.0, when it was a mixin of IMPPruner (kept so the import still works).
ResumeState = RunStore
