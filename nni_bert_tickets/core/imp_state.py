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
from typing import Any, Callable, Dict, Iterable, List, Set, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from . import masks as M
from .files import atomic_write, atomic_write_text
from .targets import base_prefix
from .ticket import Ticket

__all__ = ["ResumeState", "STATE_FORMAT", "ticket_file"]
STATE_FORMAT = "nni_bert_tickets.imp_state/2"
STATE_FILE = "imp_state.safetensors"  # the masks, task head, rewind point and trajectory after the last round
THETA_I_FILE = "theta_i.safetensors"  # the θi snapshot, written as soon as it is taken
TICKET_FILE = "ticket-round{:02d}.safetensors"  # each round's ticket, by round number
_SETTINGS_0_1 = ("levels", "schedule", "step", "rewind", "head", "seed")  # what version 0.1.0 recorded
_log = logging.getLogger(__name__)


class ResumeState:
    """The state-file half of :class:`~nni_bert_tickets.IMPPruner` (a mixin: it uses the pruner's model, masks,
    rewind point and head)."""

    def _head_names(self) -> Set[str]:
        prefix = base_prefix(self.bound_model)
        return {n for n, _ in self.bound_model.named_parameters() if prefix and not n.startswith(prefix)}

    def _body_fingerprint(self) -> str:
        """sha256 of the names, dtypes, shapes and bytes of every body parameter: all that θ0 rewinding restores
        from the model (embeddings, LayerNorm and biases as well as the prunable matrices)."""
        head, digest = self._head_names(), hashlib.sha256()
        body = sorted((unwrapped_name(n), p) for n, p in self.bound_model.named_parameters() if n not in head)
        for name, param in body:
            value = param.detach().cpu().contiguous()
            digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
            digest.update(value.reshape(-1).view(torch.uint8).numpy())
        return digest.hexdigest()

    def _rewind_params(self, names: Iterable[str]) -> None:
        """Copy the rewind point into the named parameters, then zero the pruned weights again."""
        live = dict(self.bound_model.named_parameters())
        with torch.no_grad():
            for name in names:
                live[name].copy_(self._rewind_state[name])
            for spaces in self._target_spaces.values():  # survivors only: pruned weights stay exactly 0
                for space in spaces.values():
                    if space.mask is not None:
                        space.target.masked_fill_(~space.mask.bool(), 0.0)

    # ---- writing -------------------------------------------------------------------------------------------
    def _state_tensors(self, final: bool) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
        """The tensors and header entries of the state written after a round (``final``: the last one)."""
        rewound = self.rewind is not None and not final  # the body is the rewind point under the next mask
        head = self._head_names()
        params = {n: p for n, p in self.bound_model.named_parameters() if not rewound or n in head}
        tensors = {f"model/{n}": v for n, v in {**params, **self._plain_buffers()}.items()}
        rewind = self._rewind_state or {}
        tensors.update({f"rewind/{n}": v for n, v in rewind.items() if self.rewind != 0 or n in head})
        masks = {f"{m}.{t}": s.mask for m, spaces in self._target_spaces.items() for t, s in spaces.items()
                 if s.mask is not None}
        tensors.update({f"mask/{k}": M.pack_bits(m.bool()) for k, m in masks.items()})
        header = {"state": STATE_FORMAT, "body": "rewound" if rewound else "stored", "base_model": self._base_model,
                  "mask_shapes": json.dumps({k: list(m.shape) for k, m in masks.items()})}
        # clone: tied weights share memory, which safetensors refuses
        return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}, header

    def _plain_buffers(self) -> Dict[str, torch.Tensor]:
        """The model's persistent buffers, less NNI's: its masks (saved packed) and its per-forward copies of the
        masked weights (recomputed by the next forward)."""
        params = {id(p) for p in self.bound_model.parameters()}
        nni = {f"{m}.{t}" for m, spaces in self._target_spaces.items() for t in spaces} | \
              {f"{m}._nni_wrapper.{t}_mask" for m, spaces in self._target_spaces.items() for t in spaces}
        return {n: b for n, b in self.bound_model.state_dict(keep_vars=True).items()
                if id(b) not in params and n not in nni and b is not None}

    # ---- reading -------------------------------------------------------------------------------------------
    def _changed_base(self, differ: List[str], header: Dict[str, str]) -> str:
        """Why a resume onto another base model is refused, naming both models."""
        now, then = self._base_model, header.get("base_model", "not recorded")
        return (f"{self.output_dir} holds an IMP run started from other base weights than the model given now "
                f"({', '.join(differ)} differ): the run was started from {then!r}, this model is {now!r}. The "
                "resume state does not store θ0: the body is reloaded from the model passed in, which must be that "
                "checkpoint, unchanged and freshly loaded. Use another output_dir for another model")

    def _restore_state(self, state: Dict[str, torch.Tensor], header: Dict[str, str]) -> None:
        """Put the model, the masks and the rewind point back as :meth:`_state_tensors` saved them."""
        if "state" not in header:  # version 0.1.0: the whole state_dict and the whole rewind point
            self.bound_model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model/")})
            self._rewind_state = {k[7:]: v for k, v in state.items() if k.startswith("rewind/")} or self._rewind_state
            return
        where = f"the resume state in {self.output_dir}"
        if header["state"] != STATE_FORMAT:
            raise ValueError(f"{where} is in format {header['state']!r}, written by a newer nni_bert_tickets; "
                             f"this one reads {STATE_FORMAT!r}")
        rewind = {k[7:]: v for k, v in state.items() if k.startswith("rewind/")}
        if rewind:  # θ0: the head's, merged into θ0 as taken from the model; θi: all of it
            self._rewind_state = {**(self._rewind_state or {}), **rewind} if self.rewind == 0 else rewind
        saved = {k[6:]: v for k, v in state.items() if k.startswith("model/")}
        masks = self._saved_masks(state, json.loads(header["mask_shapes"]), where)
        params, head = dict(self.bound_model.named_parameters()), self._head_names()
        live = {**params, **self._plain_buffers()}
        rewound = [n for n in params if n not in head] if header.get("body") == "rewound" else []
        if rewound and self.rewind == 0 and "base_body" not in json.loads(header.get("settings", "{}")):
            raise ValueError(f"{where} leaves θ0 to the model but records no fingerprint of it; it cannot be resumed")
        missing = sorted(set(params) - set(saved) - set(rewound))
        unknown = sorted(set(saved) - set(live))
        if missing or unknown or (rewound and any(n not in (self._rewind_state or {}) for n in rewound)):
            raise ValueError(f"{where} does not fit this model (missing {missing[:3]}, unknown {unknown[:3]}) or "
                             "lacks its rewind point")
        for name, value in saved.items():
            if tuple(value.shape) != tuple(live[name].shape):
                raise ValueError(f"{where}: {name} has shape {tuple(value.shape)}, the model {tuple(live[name].shape)}")
        with torch.no_grad():
            for name, value in saved.items():
                live[name].copy_(value)
        self.update_masks(masks)
        if rewound:
            self._rewind_params(rewound)

    def _saved_masks(self, state, shapes, where: str) -> Dict[str, Dict[str, torch.Tensor]]:
        out: Dict[str, Dict[str, torch.Tensor]] = {}
        for module_name, spaces in self._target_spaces.items():
            for target_name in spaces:
                key = f"{module_name}.{target_name}"
                if f"mask/{key}" not in state or key not in shapes:
                    raise ValueError(f"{where} has no mask for {key}")
                try:
                    mask = M.unpack_bits(state[f"mask/{key}"], shapes[key])
                except ValueError as err:
                    raise ValueError(f"{where}: the packed mask {key} {err}: the file is cut short or corrupt") \
                        from err
                out.setdefault(module_name, {})[target_name] = mask.float()
        return out

    # ---- the run on disk: saved after every round, read back by a rerun -------------------------------------
    def _save(self, level: int) -> None:
        if not self.output_dir:
            return
        os.makedirs(self.output_dir, exist_ok=True)
        # a θi ticket's rewind weights are the whole body: only the final ticket's file carries them
        self.tickets[-1].save(os.path.join(self.output_dir, ticket_file(level)),
                              include_weights=level == len(self.levels) - 1)
        state, header = self._state_tensors(final=level == len(self.levels) - 1)
        # the trajectory rides in the state file's header: one atomic write holds both, so a kill cannot leave
        # a state of one round beside the trajectory of another
        header.update(trajectory=json.dumps(self.trajectory, default=str), settings=json.dumps(self._settings()))
        atomic_write(os.path.join(self.output_dir, STATE_FILE), lambda tmp: save_file(state, tmp, metadata=header))
        atomic_write_text(os.path.join(self.output_dir, "trajectory.json"),  # a readable copy
                          json.dumps(self.trajectory, indent=1, default=str))
        try:  # the state file holds θi from now on
            os.remove(os.path.join(self.output_dir, THETA_I_FILE))
        except FileNotFoundError:  # none taken, or another data-parallel rank removed it first
            pass

    def _settings(self) -> Dict[str, Any]:
        """What makes the rounds what they are; a resume under other settings is refused."""
        return {"levels": self.levels, "schedule": self.schedule, "step": self.step, "rewind": self.rewind,
                "head": self.head, "seed": self.seed, "task": self.task, "pruned": self._covered,
                "base_weights": self._base, "base_body": self._body,
                "early_stop": self.early_stop and dataclasses.asdict(self.early_stop)}

    def _resume(self) -> int:
        path = os.path.join(self.output_dir or "", STATE_FILE)

        def read(file: str, reader: Callable[[], Any]) -> Any:
            """``reader()``; a truncated or corrupt file is named, with the way to restart the run."""
            try:
                return reader()
            except Exception as err:  # safetensors, JSON and ticket errors differ in type; all mean unreadable
                raise ValueError(
                    f"cannot resume the IMP run in {self.output_dir}: {file} is unreadable (truncated or corrupt: "
                    f"{type(err).__name__}: {err}). Delete the folder {self.output_dir} (the run's imp/ folder) "
                    "to restart the run from its first round") from err

        if not self.output_dir or not os.path.exists(path):
            theta_i = os.path.join(self.output_dir or "", THETA_I_FILE)
            if self.output_dir and self.rewind and os.path.exists(theta_i):  # killed in round 0
                self._rewind_state = read(theta_i, lambda: load_file(theta_i))
            return 0

        def metadata() -> Dict[str, str]:
            with safe_open(path, framework="pt") as f:
                return f.metadata() or {}

        def trajectory_copy() -> List[Dict[str, Any]]:
            with open(os.path.join(self.output_dir, "trajectory.json")) as f:
                return json.load(f)
        header = read(path, metadata)
        if "settings" in header:
            saved = read(path, lambda: json.loads(header["settings"]))
            now = json.loads(json.dumps(self._settings()))
            # files from before the task, the pruned set and the base weights were recorded lack those keys
            differ = sorted(k for k in now if (k in saved or k in _SETTINGS_0_1) and saved.get(k) != now[k])
            if set(differ) & {"base_weights", "base_body"}:
                raise ValueError(self._changed_base(differ, header))
            if differ:
                shown = {k: saved.get(k) for k in differ if k not in ("pruned", "base_weights")}
                raise ValueError(
                    f"{self.output_dir} holds an IMP run with other settings ({', '.join(differ)} differ"
                    + (f"; it has {shown}" if shown else "") + "): another task, model, pruned set or schedule. "
                    "Use another output_dir, or the same settings to resume it")
            self.trajectory = read(path, lambda: list(json.loads(header["trajectory"])))
        else:  # written by version 0.1.0 before the trajectory moved into the header
            _log.warning("%s is in the older resume format: its settings cannot be checked", path)
            self.trajectory = read(os.path.join(self.output_dir, "trajectory.json"), trajectory_copy)
        state = read(path, lambda: load_file(path))
        self._restore_state(state, header)
        files = [os.path.join(self.output_dir, ticket_file(r["round"])) for r in self.trajectory]
        self.tickets = [read(file, lambda file=file: Ticket.load(file)) for file in files]
        _log.info("resuming IMP after round %d from %s", len(self.trajectory) - 1, self.output_dir)
        return len(self.trajectory)


def ticket_file(round_: int) -> str:
    """The file name of round ``round_``'s ticket in an IMP run's folder."""
    return TICKET_FILE.format(round_)


def unwrapped_name(name: str) -> str:
    return name.replace("._nni_wrapper", "")


def is_main_process() -> bool:
    return not torch.distributed.is_available() or not torch.distributed.is_initialized() \
        or torch.distributed.get_rank() == 0
