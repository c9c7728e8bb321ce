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
from typing import Dict, Iterable, List, Set, Tuple

import torch

from . import masks as M
from .targets import base_prefix

__all__ = ["ResumeState", "STATE_FORMAT"]
STATE_FORMAT = "nni_bert_tickets.imp_state/2"


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


def unwrapped_name(name: str) -> str:
    return name.replace("._nni_wrapper", "")
