"""Masks are data: ``{name: bool tensor}``, True where a weight survives.

This module holds the pruning *strategies* as pure functions over such dicts (global magnitude, global
random) and the sparsity *schedules* of IMP. Nothing here touches a model; see :mod:`.ticket` for that.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .targets import check_sparsity

Masks = Dict[str, torch.Tensor]

__all__ = ["Masks", "global_magnitude_masks", "nm_magnitude_masks", "parse_nm", "check_nm", "is_nm", "random_masks",
           "sparsity", "layer_sparsity", "sparsity_schedule", "count_to_prune", "check_same_keys", "pack_bits",
           "unpack_bits"]


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


def parse_nm(pattern: str) -> Tuple[int, int]:
    """``"2:4"`` -> ``(2, 4)``: keep N of every M consecutive input weights; refused unless 0 < N < M."""
    try:
        n, m = (int(x) for x in str(pattern).split(":"))
    except ValueError:
        raise ValueError(f"an N:M pattern is two whole numbers 'N:M' (keep N of every M), got {pattern!r}; "
                         "e.g. '2:4'") from None
    if not 0 < n < m:
        raise ValueError(f"an N:M pattern keeps N of every M weights with 0 < N < M, got {pattern!r}; e.g. '2:4'")
    return n, m


def check_nm(weights: Mapping[str, torch.Tensor], n: int, m: int, sparsity: Optional[float] = None) -> None:
    """Refuse, naming the matrix or setting, a pattern that cannot hold: an input dimension (the last) that ``m``
    does not divide, or a sparsity above the pattern's own, ``1 - n/m``."""
    for name, weight in weights.items():
        if weight.dim() < 2 or weight.shape[-1] % m:
            raise ValueError(f"{name}: input dimension {tuple(weight.shape)[-1:]} is not divisible by M = {m} of "
                             f"the {n}:{m} pattern")
    if sparsity is not None and sparsity > 1 - n / m + 1e-9:
        raise ValueError(f"sparsity {sparsity:g} is beyond what a {n}:{m} pattern allows ({1 - n / m:g})")


def nm_magnitude_masks(weights: Mapping[str, torch.Tensor], sparsity: float, n: int, m: int,
                       masks: Optional[Mapping[str, torch.Tensor]] = None) -> Masks:
    """Global magnitude pruning that never prunes more than ``m - n`` of any ``m`` consecutive input weights of a
    row, so that at ``sparsity = 1 - n/m`` the masks are exactly N:M (e.g. 2:4: two of every four kept).

    Below that sparsity it removes the globally smallest weights among each group's ``m - n`` smallest, so IMP
    can approach the pattern round by round and end on it; weights already pruned by ``masks`` go first and count
    against their group's allowance (the new masks are nested in the old ones).
    """
    check_nm(weights, n, m, sparsity)
    if masks is not None:
        check_same_keys(weights, masks)
    scores = []
    for name, weight in weights.items():
        score = weight.detach().abs().float().reshape(-1, m)
        if masks is not None:
            score = torch.where(masks[name].reshape(-1, m).to(score.device), score, torch.full_like(score, -1.0))
        scores.append(score.cpu())
    groups = torch.cat(scores)                                   # (groups, m)
    order = groups.argsort(dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(m).expand_as(order))
    candidate = rank < m - n                                     # each group's m - n smallest may go
    flat, may_go = groups.flatten(), candidate.flatten()
    k = count_to_prune(flat.numel(), sparsity)
    already = int((flat < 0).sum())
    if already > k:
        raise ValueError(f"the masks already prune {already} weights, more than sparsity {sparsity} allows ({k})")
    if bool(((flat < 0) & ~may_go).any()):
        raise ValueError(f"the masks already prune more than {m - n} of some {m} consecutive weights: they are not "
                         f"nested in any {n}:{m} mask")
    keep = torch.ones_like(flat, dtype=torch.bool)
    if k:
        pool = torch.where(may_go, flat, torch.full_like(flat, float("inf")))
        keep[torch.topk(pool, k, largest=False, sorted=False).indices] = False
    return _split(keep, weights)


def is_nm(masks: Mapping[str, torch.Tensor], n: int, m: int) -> bool:
    """Every group of ``m`` consecutive input weights keeps exactly ``n``."""
    return all(bool((mask.reshape(-1, m).sum(dim=1) == n).all()) for mask in masks.values())


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
