"""Masks are data: ``{name: bool tensor}``, True where a weight survives.

This module holds the pruning *strategies* as pure functions over such dicts (global magnitude, global
random) and the sparsity *schedules* of IMP. Nothing here touches a model; see :mod:`.ticket` for that.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from .targets import check_sparsity

Masks = Dict[str, torch.Tensor]

__all__ = ["Masks", "global_magnitude_masks", "random_masks", "sparsity", "layer_sparsity",
           "sparsity_schedule", "count_to_prune", "check_same_keys", "pack_bits", "unpack_bits"]


def count_to_prune(total: int, sparsity: float) -> int:
    """How many of ``total`` weights a sparsity removes; rounded as ``torch.nn.utils.prune`` rounds."""
    return round(check_sparsity(sparsity, "sparsity") * total)


def global_magnitude_masks(weights: Mapping[str, torch.Tensor], sparsity: float,
                           masks: Optional[Mapping[str, torch.Tensor]] = None) -> Masks:
    """Prune the lowest-magnitude weights across all tensors together until ``sparsity`` of them are gone.

    Weights already pruned by ``masks`` are removed first, so the new masks are nested in the old ones (an
    IMP round never revives a weight). ``sparsity`` is a fraction of *all* the weights, not of the survivors.
    """
    names = list(weights)
    if masks is not None:
        check_same_keys(weights, masks)
    scores = []
    for name in names:
        score = weights[name].detach().abs().float().flatten()
        if masks is not None:
            score = torch.where(masks[name].flatten().to(score.device), score, torch.full_like(score, -1.0))
        scores.append(score.cpu())
    flat = torch.cat(scores)
    keep = torch.ones_like(flat, dtype=torch.bool)
    k = count_to_prune(flat.numel(), sparsity)
    if masks is not None:
        already = int((flat < 0).sum())
        if already > k:
            raise ValueError(f"the masks already prune {already} weights, more than sparsity {sparsity} allows ({k})")
    if k:
        keep[torch.topk(flat, k, largest=False, sorted=False).indices] = False
    return _split(keep, weights)


def random_masks(weights: Mapping[str, torch.Tensor], sparsity: float, seed: int = 0) -> Masks:
    """A uniformly random global mask: exactly ``round(sparsity * N)`` of all N weights pruned, seeded."""
    total = sum(w.numel() for w in weights.values())
    generator = torch.Generator().manual_seed(int(seed))
    keep = torch.ones(total, dtype=torch.bool)
    keep[torch.randperm(total, generator=generator)[:count_to_prune(total, sparsity)]] = False
    return _split(keep, weights)


def sparsity(masks: Mapping[str, torch.Tensor]) -> float:
    """The global fraction of pruned weights."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 1.0 - kept / total if total else 0.0


def layer_sparsity(masks: Mapping[str, torch.Tensor]) -> Dict[str, float]:
    """The fraction of pruned weights in each tensor."""
    return {name: 1.0 - float(m.float().mean()) for name, m in masks.items()}


def sparsity_schedule(target: float, kind: str = "linear", step: float = 0.1) -> List[float]:
    """The sparsity after each IMP round, ending exactly at ``target``.

    * ``linear`` (the reference code, default): each round removes ``step`` of the *original* weights:
      0.1, 0.2, ... .
    * ``geometric`` (the paper's text): each round removes ``step`` of the *remaining* weights:
      0.1, 0.19, 0.271, ... .
    """
    check_sparsity(target, "target sparsity")
    if not 0.0 < step < 1.0:
        raise ValueError(f"pruning step must be in (0, 1), got {step!r}")
    if kind not in ("linear", "geometric"):
        raise ValueError(f"schedule must be 'linear' or 'geometric', got {kind!r}")
    levels: List[float] = []
    level, k = 0.0, 0
    while level < target - 1e-9:
        k += 1
        level = k * step if kind == "linear" else 1.0 - (1.0 - step) ** k
        level = min(round(level, 10), target)
        levels.append(level)
    return levels


def _split(flat: torch.Tensor, like: Mapping[str, torch.Tensor]) -> Masks:
    out, start = {}, 0
    for name, tensor in like.items():
        out[name] = flat[start:start + tensor.numel()].view(tensor.shape).clone()
        start += tensor.numel()
    return out


def check_same_keys(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    """Raise unless ``a`` and ``b`` name the same tensors with the same shapes."""
    if set(a) != set(b):
        missing, extra = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise KeyError(f"masks and weights name different tensors (missing {missing[:3]}, extra {extra[:3]})")
    for name in a:
        if tuple(a[name].shape) != tuple(b[name].shape):
            raise ValueError(f"mask for {name} has shape {tuple(b[name].shape)}, weight {tuple(a[name].shape)}")


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool mask as a flat uint8 tensor, 8 entries per byte (row-major, first entry in the lowest bit)."""
    flat = mask.detach().to("cpu", torch.bool).contiguous().reshape(-1).numpy()
    return torch.from_numpy(np.packbits(flat, bitorder="little"))


def unpack_bits(packed: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The bool mask of ``shape`` that :func:`pack_bits` packed; a ``ValueError`` naming both lengths if
    ``packed`` is not a flat uint8 tensor of exactly ``ceil(numel / 8)`` bytes (cut short, or another mask's)."""
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"a mask shape cannot be negative: {shape}")
    numel = math.prod(shape)
    need = math.ceil(numel / 8)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != need:
        raise ValueError(f"holds {packed.numel()} {str(packed.dtype).replace('torch.', '')} entries of shape "
                         f"{tuple(packed.shape)}; a packed mask of shape {shape} is {need} uint8 bytes")
    bits = np.unpackbits(packed.contiguous().numpy(), count=numel, bitorder="little")
    return torch.from_numpy(bits.astype(bool)).reshape(shape)
