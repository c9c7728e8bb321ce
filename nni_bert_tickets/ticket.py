"""A lottery ticket as a file: masks plus the facts needed to trust and reuse them.

A :class:`Ticket` stores one bool mask per prunable matrix (True = kept), keyed relative to the model body
(``encoder.layer.0.attention.self.query.weight``), so a mask found under one task head applies under another.
It is saved with safetensors (no pickle); metadata is one JSON string in the safetensors header.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import masks as M
from .files import atomic_write
from .targets import base_prefix, prunable_modules, ticket_key

__all__ = ["Ticket", "TicketError", "AppliedTicket", "prunable_weights", "fingerprint"]

_FORMAT = "nni_bert_tickets.ticket/1"
_log = logging.getLogger(__name__)


class TicketError(ValueError):
    """A ticket that does not fit a model, or a file that is not a valid ticket."""


def prunable_weights(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The model's prunable weights by ticket key (the live parameters, not copies)."""
    return {ticket_key(model, name): module.weight for name, module in prunable_modules(model).items()}


def fingerprint(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the names, shapes and float32 values of the *surviving* weights.

    Pruned positions hash as zero, so a base model and the same model with the ticket applied agree.
    """
    digest = hashlib.sha256()
    for key in sorted(masks):
        w = weights[key].detach().float().cpu()
        digest.update(f"{key}:{tuple(w.shape)};".encode())
        digest.update(torch.where(masks[key].cpu(), w, torch.zeros(())).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Ticket:
    """Masks and metadata of one subnetwork f(x; m ⊙ θ, γ).

    ``weights``, when present, are the values the surviving weights are rewound to (θi for i > 0); with
    ``None`` the subnetwork starts from the base model's own pre-trained weights θ0.
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
    version: str = ""

    def __post_init__(self) -> None:
        self.masks = {k: v.detach().to("cpu", torch.bool) for k, v in self.masks.items()}
        if not self.version:
            from . import __version__
            self.version = __version__

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: torch.nn.Module, masks: Mapping[str, torch.Tensor],
                   base_weights: Optional[Mapping[str, torch.Tensor]] = None, **meta: Any) -> "Ticket":
        """A ticket for ``model`` (keys as :func:`prunable_weights`); fingerprinted on ``base_weights`` (θ0),
        by default the model's current weights."""
        weights = prunable_weights(model) if base_weights is None else base_weights
        M._check_same_keys(weights, masks)
        meta.setdefault("base_model", _model_name(model))
        return cls(masks=dict(masks), fingerprint=fingerprint(weights, masks), **meta)

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
        gradient masking. ``strict`` requires the ticket and model to cover the same matrices
        (``strict=False`` tolerates a pooler on one side only, as between MLM and classification models);
        ``check_weights`` requires the model's surviving weights to be the ticket's base weights θ0 (pass
        False for the re-initialised or shuffled baselines); ``load_weights`` copies a θi ticket's weights in.
        """
        live = prunable_weights(model)
        self._check_fits(live, strict)
        masks = {k: m for k, m in self.masks.items() if k in live}
        if check_weights and self.fingerprint:
            got = fingerprint(live, masks) if len(masks) == len(self.masks) else None
            if got != self.fingerprint:
                raise TicketError(
                    f"{type(model).__name__} does not hold the weights this ticket was found on "
                    f"({self.base_model or 'unknown base'}, fingerprint {self.fingerprint[:12]}): a different "
                    "checkpoint, or weights already trained; pass check_weights=False to apply it anyway")
        with torch.no_grad():
            if load_weights and self.weights is not None:
                self._load_weights(model)
            for key, mask in masks.items():
                live[key].masked_fill_(~mask.to(live[key].device), 0.0)
        return AppliedTicket(self, {key: live[key] for key in masks})

    def _load_weights(self, model: torch.nn.Module) -> None:
        """Copy a θi ticket's rewind weights (keyed relative to the body) into the model's body."""
        prefix = base_prefix(model)
        body = {n[len(prefix):]: p for n, p in model.named_parameters() if n.startswith(prefix)}
        missing = sorted(set(self.weights) - set(body))
        if missing:
            raise TicketError(f"the ticket's rewind weights do not fit this model: no {missing[:3]}")
        for key, value in self.weights.items():  # all checked before any is copied
            if tuple(body[key].shape) != tuple(value.shape):
                raise TicketError(f"rewind weight {key} has shape {tuple(value.shape)}, the model "
                                  f"{tuple(body[key].shape)}")
        for key, value in self.weights.items():
            body[key].copy_(value.to(body[key]))

    def transfer_to(self, model: torch.nn.Module, task: Optional[str] = None) -> "AppliedTicket":
        """Apply this task-S ticket to a fresh model for task T (pre-trained body θ0, new head).

        Matrices the ticket lacks (an MLM ticket has no pooler) stay dense, with a warning.
        """
        applied = self.apply(model, strict=False, check_weights=True)
        if task is not None:
            applied.ticket = dataclasses.replace(self, task=task, metrics={"source_task": self.task})
        return applied

    def _check_fits(self, live: Mapping[str, torch.Tensor], strict: bool) -> None:
        missing = sorted(set(self.masks) - set(live))
        uncovered = sorted(set(live) - set(self.masks))
        # non-strict allows one difference of layout: a pooler on one side only (an MLM model has none)
        if missing and (strict or _beyond_pooler(missing)):
            raise TicketError(f"ticket is for another architecture: model has no {missing[:3]} "
                              f"({len(missing)} of the ticket's {len(self.masks)} matrices missing)")
        if uncovered:
            if strict:
                raise TicketError(f"ticket is for another architecture: it covers {len(self.masks)} matrices, the model has {len(live)} "
                                  f"prunable ones (e.g. {uncovered[:2]}); use strict=False to leave them dense")
            if _beyond_pooler(uncovered):
                raise TicketError(f"ticket is for another architecture: the model has prunable matrices the "
                                  f"ticket lacks (e.g. {uncovered[:2]}), beyond a pooler")
            _log.warning("ticket leaves %d matrices dense: %s", len(uncovered), uncovered[:3])
        if missing:
            _log.warning("the model has no %s: those masks of the ticket are not used", missing)
        for key, mask in self.masks.items():
            if key in live and tuple(live[key].shape) != tuple(mask.shape):
                raise TicketError(f"ticket is for another architecture: {key} has shape {tuple(mask.shape)} in the "
                                  f"ticket and {tuple(live[key].shape)} in the model")

    # ---- files --------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, include_weights: bool = True) -> None:
        """Write the ticket as one safetensors file, atomically (a temporary file renamed into place).
        ``include_weights=False`` leaves out a θi ticket's rewind weights (masks and metadata only)."""
        tensors = {f"mask/{k}": m.contiguous() for k, m in self.masks.items()}
        for k, w in ((self.weights or {}) if include_weights else {}).items():
            tensors[f"weight/{k}"] = w.detach().cpu().contiguous()
        header = {"format": _FORMAT, "meta": json.dumps(self.metadata(), sort_keys=True, default=str)}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Ticket":
        """Read a ticket written by :meth:`save`; a truncated or foreign file raises :class:`TicketError`."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no ticket file at {path}")
        try:
            with safe_open(path, framework="pt") as f:
                header = f.metadata() or {}
                if header.get("format") != _FORMAT:
                    raise TicketError(f"{path} is a safetensors file but not an nni_bert_tickets ticket "
                                      f"(format {header.get('format')!r})")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = json.loads(header["meta"])
            if not isinstance(meta, dict):
                raise TicketError(f"{path}: the ticket metadata is not a JSON object")
        except (SafetensorError, OSError, json.JSONDecodeError, KeyError) as err:
            raise TicketError(f"{path} is not a readable ticket file (truncated or corrupt?): {err}") from err
        masks = {k[len("mask/"):]: t for k, t in tensors.items() if k.startswith("mask/")}
        weights = {k[len("weight/"):]: t for k, t in tensors.items() if k.startswith("weight/")} or None
        if not masks or any(t.dtype != torch.bool for t in masks.values()):
            raise TicketError(f"{path} holds no bool masks; not a ticket file")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(masks=masks, weights=weights, **{k: v for k, v in meta.items() if k in fields and k != "masks"})


class AppliedTicket:
    """A ticket installed on a model; keeps pruned gradients at zero until :meth:`remove`."""

    def __init__(self, ticket: Ticket, params: Dict[str, torch.nn.Parameter]):
        self.ticket = ticket
        self.params = params
        self._handles: List[Any] = []
        for key, param in params.items():
            if param.requires_grad:
                self._handles.append(param.register_hook(_GradMask(ticket.masks[key])))

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


def _beyond_pooler(keys) -> bool:
    """Whether ``keys`` name any matrix but a pooler (the one layout difference ``strict=False`` allows)."""
    return any(not k.startswith("pooler.") for k in keys)


def _model_name(model: torch.nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or getattr(config, "model_type", "") or type(model).__name__)
