"""The paper's baselines (Table 2 and Fig. 3) as small strategies composed with a ticket.

Masks:
    * :func:`random_ticket`: random pruning, a random global mask at a ticket's sparsity.
    * :func:`one_shot_magnitude_ticket`: one-shot global magnitude pruning of θ0, no training.
Weights (then apply the IMP ticket with ``check_weights=False``):
    * :func:`reinitialize`: random re-initialisation θ0′ of the body.
    * :func:`shuffle_weights`: shuffled pre-trained weights θ0″.
Standard pruning (prune the fine-tuned weights, keep training, no rewind) is ``IMPPruner(rewind=None)``.
"""
from __future__ import annotations

import dataclasses
from typing import Literal, Optional

import torch

from . import masks as M
from .targets import prunable_modules
from .ticket import Ticket, prunable_weights

__all__ = ["random_ticket", "one_shot_magnitude_ticket", "reinitialize", "shuffle_weights", "init_module_"]


def random_ticket(ticket: Ticket, seed: int = 0) -> Ticket:
    """A random global mask with the same matrices and the same global sparsity as ``ticket``."""
    masks = M.random_masks(ticket.masks, ticket.sparsity, seed=seed)
    return dataclasses.replace(ticket, masks=masks, algorithm="random", seed=seed, weights=None, metrics={})


def one_shot_magnitude_ticket(model: torch.nn.Module, sparsity: float, pooler: Optional[bool] = None,
                              **meta) -> Ticket:
    """Prune the lowest-magnitude weights of the model's current (pre-trained) weights, globally, once, over the
    prunable matrices (``pooler`` as in :func:`~nni_bert_tickets.core.targets.prunable_modules`)."""
    weights = prunable_weights(model, pooler)
    return Ticket.from_model(model, M.global_magnitude_masks(weights, sparsity), algorithm="oneshot", **meta)


def reinitialize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """θ0′: re-initialise the whole body in place with the model's own initialiser (as a fresh ``from_config``).

    Embeddings, LayerNorm and biases are re-initialised too, as in the reference code, where the random
    baseline is a model built from its config.
    """
    body = getattr(model, "base_model", model)
    torch.manual_seed(seed)
    for module in body.modules():
        init_module_(module, _init_std(model))
    return model


def init_module_(module: torch.nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation of one module, in place: N(0, std) weights for Linear and Embedding, zero biases,
    LayerNorm to (1, 0). Written out because ``PreTrainedModel._init_weights`` skips loaded modules."""
    with torch.no_grad():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            module.weight.normal_(0.0, std)
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, torch.nn.Embedding) and module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, torch.nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif list(module.parameters(recurse=False)) and hasattr(module, "reset_parameters"):
            module.reset_parameters()


def _init_std(model: torch.nn.Module) -> float:
    return float(getattr(getattr(model, "config", None), "initializer_range", 0.02))


def shuffle_weights(model: torch.nn.Module, seed: int = 0,
                    mode: Literal["layers", "within"] = "layers") -> torch.nn.Module:
    """θ0″: shuffle the pre-trained prunable weights in place.

    * ``'layers'`` (default, the reference code): one random permutation of the layer indices; layer i takes
      all six prunable matrices of layer perm[i]. The values inside each matrix are untouched and the
      pooler is left as it is.
    * ``'within'``: every prunable matrix (pooler included) has its entries randomly permuted, which keeps
      each matrix's value distribution but destroys all of its structure.
    """
    generator = torch.Generator().manual_seed(seed)
    modules = prunable_modules(model)
    with torch.no_grad():
        if mode == "within":
            for module in modules.values():
                flat = module.weight.view(-1)
                flat.copy_(flat[torch.randperm(flat.numel(), generator=generator).to(flat.device)])
        elif mode == "layers":
            layers = {}
            for name, module in modules.items():
                idx = _layer_index(name)
                if idx is not None:
                    layers.setdefault(idx, {})[_within_layer(name)] = module
            order = sorted(layers)
            perm = torch.randperm(len(order), generator=generator).tolist()
            originals = {i: {k: m.weight.detach().clone() for k, m in layers[i].items()} for i in order}
            for dst, src in zip(order, (order[p] for p in perm)):
                for key, module in layers[dst].items():
                    module.weight.copy_(originals[src][key])
        else:
            raise ValueError(f"shuffle mode must be 'layers' or 'within', got {mode!r}")
    return model


def _layer_index(name: str):
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == "layer" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def _within_layer(name: str) -> str:
    parts = name.split(".")
    i = parts.index("layer")
    return ".".join(parts[i + 2:])

