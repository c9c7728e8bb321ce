"""A lottery ticket as a file: masks plus the facts needed to trust and reuse them.

A :class:`Ticket` stores one bool mask per prunable matrix (True = kept), keyed relative to the model body
(``encoder.layer.0.attention.self.query.weight``), so a mask found under one task head applies under another.
It is saved with safetensors (no pickle); metadata is one JSON string in the safetensors header. Format /2
packs each mask 8 entries per byte (uint8, shapes in the header); format /1 (version 0.1.0: one bool byte per
entry) still loads.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import masks as M
from .digest import DIGEST_KEY, digest_problem, file_holds, fingerprint, matrix_fingerprints, ticket_digest
from .errors import TicketError
from .files import atomic_write
from .architectures import model_type as type_of
from .targets import base_prefix, is_pooler, prunable_modules, ticket_key

__all__ = ["Ticket", "TicketError", "AppliedTicket", "prunable_weights", "fingerprint", "matrix_fingerprints"]

_FORMAT = "nni_bert_tickets.ticket/2"  # masks packed 8 per byte, their shapes in the header
_FORMAT_0_1 = "nni_bert_tickets.ticket/1"  # version 0.1.0: one bool byte per mask entry
_log = logging.getLogger(__name__)


def prunable_weights(model: torch.nn.Module, pooler: Optional[bool] = None) -> Dict[str, torch.Tensor]:
    """The model's prunable weights by ticket key (the live parameters, not copies); ``pooler`` as in
    :func:`~nni_bert_tickets.core.targets.prunable_modules`."""
    return {ticket_key(model, name): module.weight for name, module in prunable_modules(model, pooler).items()}


@dataclass
class Ticket:
    """Masks and metadata of one subnetwork f(x; m ⊙ θ, γ).

    ``weights``, when present, are the values the surviving weights are rewound to (θi for i > 0); with
    ``None`` the subnetwork starts from the base model's own pre-trained weights θ0.

    A ticket *covers* the matrices it has masks for: all of the model's prunable matrices (the paper's set), or
    a subset (the pooler left out, only attention, some layers). Matrices it does not cover stay dense and
    untouched wherever it is applied. ``encoder_matrices`` is how many prunable matrices (the pooler aside) the
    model it was found on has, so a ticket is never applied to another layout as if it were a subset.
    """

    masks: Dict[str, torch.Tensor]
    base_model: str = ""
    fingerprint: str = ""
    task: Optional[str] = None
    algorithm: str = "imp"
    schedule: Optional[str] = None
    round: Optional[int] = None
    seed: Optional[int] = None
    rewind: Optional[str] = None
    metrics: Dict[str, Any] = field(default_factory=dict)
    weights: Optional[Dict[str, torch.Tensor]] = None
    model_type: str = ""
    theta0: str = ""                      # what θ0 is, where it is more than the checkpoint (a warmed MLM head)
    encoder_matrices: Optional[int] = None
    matrix_fingerprints: Dict[str, str] = field(default_factory=dict)
    version: str = ""

    def __post_init__(self) -> None:
        self.masks = {k: v.detach().to("cpu", torch.bool) for k, v in self.masks.items()}
        if not self.version:
            from .._version import __version__
            self.version = __version__

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: torch.nn.Module, masks: Mapping[str, torch.Tensor],
                   base_weights: Optional[Mapping[str, torch.Tensor]] = None, **meta: Any) -> "Ticket":
        """A ticket for ``model`` covering the matrices ``masks`` names (keys as :func:`prunable_weights`: all of
        them, or a subset); fingerprinted on ``base_weights`` (θ0), by default the model's current weights."""
        live = prunable_weights(model)
        unknown = sorted(set(masks) - set(live))
        if unknown:
            raise TicketError(f"masks name {unknown[:3]}, which are not prunable matrices of {type(model).__name__} "
                              "(embeddings, biases, LayerNorm and task heads are never pruned)")
        if not masks:
            raise TicketError("a ticket needs at least one mask")
        source = live if base_weights is None else base_weights
        absent = sorted(set(masks) - set(source))
        if absent:
            raise TicketError(f"base_weights lack {absent[:3]}")
        weights = {k: source[k] for k in masks}
        M.check_same_keys(weights, masks)
        meta.setdefault("base_model", model_name(model))
        meta.setdefault("model_type", type_of(model))
        meta.setdefault("encoder_matrices", sum(not is_pooler(k) for k in live))
        return cls(masks=dict(masks), fingerprint=fingerprint(weights, masks),
                   matrix_fingerprints=matrix_fingerprints(weights, masks), **meta)

    @classmethod
    def from_nni_masks(cls, model: torch.nn.Module, nni_masks: Mapping[str, Mapping[str, torch.Tensor]],
                       **meta: Any) -> "Ticket":
        """From NNI's ``{module_name: {'weight': mask}}`` (as ``pruner.compress()`` returns)."""
        masks = {ticket_key(model, name): targets["weight"].bool() for name, targets in nni_masks.items()
                 if targets.get("weight") is not None}
        return cls.from_model(model, masks, **meta)

    def to_nni_masks(self, model: torch.nn.Module) -> Dict[str, Dict[str, torch.Tensor]]:
        """NNI's ``{module_name: {'weight': float mask}}`` for ``model``, e.g. for ``pruner.update_masks``."""
        keys = {ticket_key(model, name): name for name in prunable_modules(model)}
        return {keys[k]: {"weight": m.float()} for k, m in self.masks.items() if k in keys}

    # ---- facts --------------------------------------------------------------------------------------------
    @property
    def sparsity(self) -> float:
        return M.sparsity(self.masks)

    @property
    def layer_sparsity(self) -> Dict[str, float]:
        return M.layer_sparsity(self.masks)

    def metadata(self) -> Dict[str, Any]:
        meta = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("masks", "weights")}
        meta.update(sparsity=self.sparsity, layer_sparsity=self.layer_sparsity, num_matrices=len(self.masks))
        return meta

    def __repr__(self) -> str:
        return (f"Ticket({self.algorithm}, task={self.task}, sparsity={self.sparsity:.1%}, "
                f"{len(self.masks)} matrices, base={self.base_model!r})")

    # ---- applying -----------------------------------------------------------------------------------------
    def apply(self, model: torch.nn.Module, *, strict: bool = True, check_weights: bool = True,
              load_weights: bool = True) -> "AppliedTicket":
        """Zero the pruned weights of ``model`` and keep them zero during training.

        Pruned weights are set to exactly 0 and their gradients are masked, so any optimizer whose update is
        zero for a zero gradient from zero state (SGD, Adam, AdamW with decoupled weight decay) leaves them at
        exactly 0. Parameter names are unchanged (``save_pretrained`` keeps working); ``.remove()`` undoes the
        gradient masking. Matrices the ticket does not cover stay dense. ``strict=False`` also tolerates a
        pooler mask for a model without a pooler (a classification ticket on an MLM or SQuAD model): that mask
        is dropped with a logged note, and :attr:`AppliedTicket.sparsity` is the sparsity actually applied.
        ``check_weights`` requires the model's surviving weights to be the ticket's base weights θ0 (pass
        False for the re-initialised or shuffled baselines); ``load_weights`` copies a θi ticket's weights in.
        """
        live = prunable_weights(model)
        masks = self.fit(model, strict)
        if check_weights and self.fingerprint:
            self._check_base_weights(model, live, masks)
        with torch.no_grad():
            if load_weights and self.weights is not None:
                self._load_weights(model)
            for key, mask in masks.items():
                live[key].masked_fill_(~mask.to(live[key].device), 0.0)
        applied = AppliedTicket(self, {key: live[key] for key in masks})
        if len(masks) < len(self.masks):
            _log.warning("applied %d of the ticket's %d masks: sparsity %.2f%% over them (the ticket's own: %.2f%%)",
                         len(masks), len(self.masks), 100 * applied.sparsity, 100 * self.sparsity)
        return applied

    def fit(self, model: torch.nn.Module, strict: bool = True) -> Dict[str, torch.Tensor]:
        """The masks of this ticket that apply to ``model``; a :class:`TicketError` if the ticket is for another
        architecture or model type, or (with ``strict``) covers a matrix the model lacks."""
        live = prunable_weights(model)
        kind = type_of(model)
        if self.model_type and kind and kind != self.model_type:
            raise TicketError(f"ticket is for a {self.model_type!r} model, not {kind!r} ({type(model).__name__})")
        missing = sorted(set(self.masks) - set(live))
        if missing and (strict or not all(is_pooler(k) for k in missing)):
            raise TicketError(
                f"ticket is for another architecture: the model has no {missing[:3]} ({len(missing)} of the "
                f"ticket's {len(self.masks)} matrices missing)"
                + ("; a pooler mask can be dropped with strict=False (as transfer_to does)"
                   if all(is_pooler(k) for k in missing) else ""))
        if missing:
            pruned = sum(int((~self.masks[k]).sum()) for k in missing)
            _log.warning("the model has no pooler: the ticket's pooler mask (%d of its weights pruned) is not applied",
                         pruned)
        encoder = sum(not is_pooler(k) for k in live)
        if self.encoder_matrices is not None and encoder != self.encoder_matrices:
            raise TicketError(f"ticket is for another architecture: it was found on a model with "
                              f"{self.encoder_matrices} encoder matrices, this one has {encoder}")
        uncovered = sorted(set(live) - set(self.masks))
        if self.encoder_matrices is None and uncovered:  # a 0.1.0 ticket: it always covered the whole set
            if strict or not all(is_pooler(k) for k in uncovered):
                raise TicketError(f"ticket is for another architecture: it covers {len(self.masks)} matrices, the "
                                  f"model has {len(live)} prunable ones (e.g. {uncovered[:2]})")
        if uncovered:
            _log.info("the ticket covers %d of the model's %d prunable matrices; %s stay dense",
                      len(live) - len(uncovered), len(live), uncovered[:3] if len(uncovered) <= 3 else
                      f"{len(uncovered)} (e.g. {uncovered[:2]})")
        for key, mask in self.masks.items():
            if key in live and tuple(live[key].shape) != tuple(mask.shape):
                raise TicketError(f"ticket is for another architecture: {key} has shape {tuple(mask.shape)} in the "
                                  f"ticket and {tuple(live[key].shape)} in the model")
        return {k: m for k, m in self.masks.items() if k in live}

    def _check_base_weights(self, model: torch.nn.Module, live: Mapping[str, torch.Tensor],
                            masks: Mapping[str, torch.Tensor]) -> None:
        if len(masks) == len(self.masks):
            same = fingerprint(live, masks) == self.fingerprint
        elif self.matrix_fingerprints:
            same = matrix_fingerprints(live, masks) == {k: self.matrix_fingerprints.get(k) for k in masks}
        else:  # a 0.1.0 ticket applied without its pooler: its one fingerprint covers the pooler too
            _log.warning("this ticket (version %s) has no per-matrix fingerprints: the base weights of a partial "
                         "application cannot be checked", self.version)
            same = True
        if not same:
            raise TicketError(
                f"{type(model).__name__} does not hold the weights this ticket was found on "
                f"({self.base_model or 'unknown base'}, fingerprint {self.fingerprint[:12]}): a different "
                "checkpoint, or weights already trained; pass check_weights=False to apply it anyway")

    def _load_weights(self, model: torch.nn.Module) -> None:
        """Copy a θi ticket's rewind weights (keyed relative to the body) into the model's body."""
        prefix = base_prefix(model)
        body = {n[len(prefix):]: p for n, p in model.named_parameters() if n.startswith(prefix)}
        missing = sorted(set(self.weights) - set(body))
        if missing and not all(k.startswith("pooler.") for k in missing):
            raise TicketError(f"the ticket's rewind weights do not fit this model: no {missing[:3]}")
        weights = {k: v for k, v in self.weights.items() if k in body}  # a pooler the model lacks is skipped
        for key, value in weights.items():  # all checked before any is copied
            if tuple(body[key].shape) != tuple(value.shape):
                raise TicketError(f"rewind weight {key} has shape {tuple(value.shape)}, the model "
                                  f"{tuple(body[key].shape)}")
        for key, value in weights.items():
            body[key].copy_(value.to(body[key]))

    def transfer_to(self, model: torch.nn.Module, task: Optional[str] = None) -> "AppliedTicket":
        """Apply this task-S ticket to a fresh model for task T (pre-trained body θ0, new head).

        Between classification models (with a pooler) and MLM or SQuAD models (without) the pooler differs:
        a pooler mask the target lacks is dropped (logged, with the sparsity actually applied), and a pooler
        the ticket lacks stays dense.
        """
        applied = self.apply(model, strict=False, check_weights=True)
        if task is not None:
            applied.ticket = dataclasses.replace(self, task=task, metrics={"source_task": self.task})
        return applied

    # ---- files --------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, include_weights: bool = True) -> None:
        """Write the ticket as one safetensors file (format /2: masks packed 8 per byte), atomically (a temporary
        file renamed into place). ``include_weights=False`` leaves out a θi ticket's rewind weights."""
        tensors = {f"mask/{k}": M.pack_bits(m) for k, m in self.masks.items()}
        for k, w in ((self.weights or {}) if include_weights else {}).items():
            tensors[f"weight/{k}"] = w.detach().cpu().contiguous()
        header = {"format": _FORMAT, "meta": json.dumps(self.metadata(), sort_keys=True, default=str),
                  "mask_shapes": json.dumps({k: list(m.shape) for k, m in self.masks.items()}, sort_keys=True)}
        header[DIGEST_KEY] = ticket_digest(header, tensors)  # load refuses a file whose content no longer has it
        if file_holds(os.fspath(path), header[DIGEST_KEY]):
            return  # the same ticket is already there: leave its bytes alone
        size = sum(t.numel() * t.element_size() + 100 for t in tensors.values()) + len(json.dumps(header))
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header), size=size)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Ticket":
        """Read a ticket written by :meth:`save`; a truncated, altered or foreign file raises :class:`TicketError`
        (a file written before tickets carried a digest loads, with a logged note)."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no ticket file at {path}")
        try:
            with safe_open(path, framework="pt") as f:
                header = f.metadata() or {}
                kind = header.get("format")
                if isinstance(kind, str) and kind.startswith(_FORMAT[:-1]) and kind not in (_FORMAT, _FORMAT_0_1):
                    raise TicketError(f"{path} is a ticket in format {kind!r}, written by a newer nni_bert_tickets; "
                                      f"this one reads {_FORMAT_0_1!r} and {_FORMAT!r}")
                if kind not in (_FORMAT, _FORMAT_0_1):
                    raise TicketError(f"{path} is a safetensors file but not an nni_bert_tickets ticket "
                                      f"(format {kind!r})")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = json.loads(header["meta"])
            shapes = json.loads(header["mask_shapes"]) if kind == _FORMAT else None
            if not isinstance(meta, dict) or not isinstance(shapes, (dict, type(None))):
                raise TicketError(f"{path}: the ticket metadata is not a JSON object")
        except (SafetensorError, OSError, json.JSONDecodeError, KeyError) as err:
            raise TicketError(f"{path} is not a readable ticket file (truncated or corrupt?): {err}") from err
        masks = {k[len("mask/"):]: t for k, t in tensors.items() if k.startswith("mask/")}
        weights = {k[len("weight/"):]: t for k, t in tensors.items() if k.startswith("weight/")} or None
        if shapes is not None:
            masks = _unpack(path, masks, shapes)
        problem = digest_problem(path, header, tensors)  # after the checks that name what is wrong with a damaged file
        if problem:
            raise TicketError(f"{path} {problem}")
        if not masks or any(t.dtype != torch.bool for t in masks.values()):
            raise TicketError(f"{path} holds no bool masks; not a ticket file")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(masks=masks, weights=weights, **{k: v for k, v in meta.items() if k in fields and k != "masks"})

    # ---- sharing: a folder with the file and a model card, the Hugging Face Hub's way (see .hub) ---------------
    def save_pretrained(self, folder: str | os.PathLike, **card: Any):
        """``ticket.safetensors`` and a model card in ``folder`` (``card``: :func:`.hub.save_pretrained`'s facts)."""
        from .hub import save_pretrained
        return save_pretrained(self, folder, **card)

    @classmethod
    def from_pretrained(cls, repo_id_or_folder: str | os.PathLike, revision: Optional[str] = None,
                        **hub: Any) -> "Ticket":
        """A ticket from a ticket folder or a Hub repository (offline: from the Hub cache), checked against its card."""
        from .hub import from_pretrained
        return from_pretrained(repo_id_or_folder, revision, load=cls.load, **hub)

    def push_to_hub(self, repo_id: str, **kwargs: Any):
        """Upload the folder :meth:`save_pretrained` writes to the Hub repository ``repo_id``."""
        from .hub import push_to_hub
        return push_to_hub(self, repo_id, **kwargs)


class AppliedTicket:
    """A ticket installed on a model; keeps pruned gradients at zero until :meth:`remove`."""

    def __init__(self, ticket: Ticket, params: Dict[str, torch.nn.Parameter]):
        self.ticket = ticket
        self.params = params
        self.masks = {key: ticket.masks[key] for key in params}  # the masks actually applied
        self._handles: List[Any] = []
        for key, param in params.items():
            if param.requires_grad:
                self._handles.append(param.register_hook(_GradMask(ticket.masks[key])))

    @property
    def sparsity(self) -> float:
        """The sparsity actually applied: over the masks the model had matrices for."""
        return M.sparsity(self.masks)

    def remove(self) -> None:
        """Stop masking gradients (the weights keep their current values)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "AppliedTicket":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


class _GradMask:
    """Zeroes the pruned entries of a gradient, on whatever device the model has moved to since ``apply``
    (``accelerator.prepare`` moves it after the ticket was applied on the CPU)."""

    def __init__(self, mask: torch.Tensor):
        self.masks = {mask.device: mask}

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        mask = self.masks.get(grad.device)
        if mask is None:
            mask = self.masks[grad.device] = next(iter(self.masks.values())).to(grad.device)
        return grad * mask


def _unpack(path: str, packed: Mapping[str, torch.Tensor], shapes: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """Format /2's packed masks as bool tensors; every mask must have its recorded shape and exactly its bytes."""
    if set(packed) != set(shapes):
        odd = sorted(set(packed) ^ set(shapes))
        raise TicketError(f"{path}: the masks and the shapes recorded for them differ ({odd[:3]}); not a whole ticket")
    masks = {}
    for key, tensor in packed.items():
        try:
            masks[key] = M.unpack_bits(tensor, shapes[key])
        except (TypeError, ValueError) as err:
            raise TicketError(f"{path}: the packed mask {key} {err}: the file is cut short or corrupt") from err
    return masks


def model_name(model: torch.nn.Module) -> str:
    """What a ticket records as its base model: the checkpoint's name or path, else its type."""
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or getattr(config, "model_type", "") or type(model).__name__)
