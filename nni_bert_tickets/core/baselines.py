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

import contextlib
import dataclasses
import logging
from typing import Dict, Literal, Optional

import torch

from . import masks as M
from .architectures import prunable_matrices
from .targets import prunable_modules
from .ticket import Ticket, prunable_weights

__all__ = ["random_ticket", "one_shot_magnitude_ticket", "reinitialize", "reinit_parameters_", "shuffle_weights",
           "check_layer_shuffle", "init_module_"]
_log = logging.getLogger(__name__)


def random_ticket(ticket: Ticket, seed: int = 0) -> Ticket:
    """A random global mask with the same matrices and the same global sparsity as ``ticket``."""
    masks = M.random_masks(ticket.masks, ticket.sparsity, seed=seed)
    return dataclasses.replace(ticket, masks=masks, algorithm="random", seed=seed, weights=None, metrics={})


def one_shot_magnitude_ticket(model: torch.nn.Module, sparsity: float, pooler: Optional[bool] = None,
                              pattern: Optional[str] = None, **meta) -> Ticket:
    """Prune the lowest-magnitude weights of the model's current (pre-trained) weights, globally, once, over the
    prunable matrices (``pooler`` as in :func:`~nni_bert_tickets.core.targets.prunable_modules`). With an N:M
    ``pattern`` (e.g. ``"2:4"``) no group of M consecutive input weights loses more than M − N: at sparsity 1 − N/M
    the mask is exactly N:M."""
    weights = prunable_weights(model, pooler)
    masks = M.global_magnitude_masks(weights, sparsity) if pattern is None else \
        M.nm_magnitude_masks(weights, sparsity, *M.parse_nm(pattern))
    return Ticket.from_model(model, masks, algorithm="oneshot", **meta)


def reinitialize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """θ0′: re-initialise the whole body in place with the architecture's own initialiser (as a fresh
    ``from_config``): its ``PreTrainedModel._init_weights`` (BERT: N(0, initializer_range); ModernBERT: truncated
    normal with the output projections scaled down by depth), or BERT's init for a model without one.

    Embeddings, LayerNorm and biases are re-initialised too, as in the reference code, where the random
    baseline is a model built from its config. The task head is left as it is.
    """
    body = getattr(model, "base_model", model)
    torch.manual_seed(seed)
    reinit_parameters_(model, list(body.parameters()))
    return model


def reinit_parameters_(model: torch.nn.Module, params) -> None:
    """Re-initialise ``params`` (parameters of ``model``) in place as the architecture's own initialiser would,
    and nothing else.

    Calls ``_init_weights`` children first (as ``PreTrainedModel.initialize_weights`` does, so a parent's rule,
    e.g. ModernBERT's scaled output projections, wins) on every module above a parameter to re-initialise. Every
    other parameter is flagged as loaded (``_is_hf_initialized``, which transformers' init functions honour)
    and, where this transformers has no such flag, restored afterwards. A model without ``_init_weights`` gets
    :func:`init_module_` (BERT's initialisation) on the modules owning those parameters.
    """
    targets = {id(p) for p in params}
    everything = list(dict.fromkeys(model.parameters()))
    others = [p for p in everything if id(p) not in targets]
    init = getattr(model, "_init_weights", None)
    if init is None:
        _log.info("%s has no _init_weights: BERT's initialisation is used", type(model).__name__)
        for module in model.modules():
            if any(id(p) in targets for p in module.parameters(recurse=False)):
                init_module_(module, _init_std(model))
        return
    guard = getattr(_hf_init(), "guard_torch_init_functions", None)
    saved = None if guard is not None else [p.detach().clone() for p in others]
    flags = {id(p): getattr(p, "_is_hf_initialized", _UNSET) for p in everything}
    try:
        for p in everything:
            p._is_hf_initialized = id(p) not in targets
        with torch.no_grad(), (guard() if guard is not None else contextlib.nullcontext()):
            _post_order(model, init, targets, set())
    finally:
        for p in everything:
            if flags[id(p)] is _UNSET:
                del p._is_hf_initialized
            else:
                p._is_hf_initialized = flags[id(p)]
    if saved is not None:
        with torch.no_grad():
            for p, value in zip(others, saved):
                p.copy_(value)


_UNSET = object()


def _post_order(module: torch.nn.Module, init, targets: set, seen: set) -> bool:
    """Run ``init`` on ``module``'s subtree, children first, where the subtree holds a target; a nested
    ``PreTrainedModel`` brings its own ``_init_weights``. Returns whether the subtree holds a target."""
    holds = any(id(p) in targets for p in module.parameters(recurse=False))
    for child in module.children():
        if id(child) in seen:
            continue
        seen.add(id(child))
        holds |= _post_order(child, getattr(child, "_init_weights", None) if _is_pretrained(child) else init,
                             targets, seen)
    if holds:
        init(module)
    return holds


def _is_pretrained(module: torch.nn.Module) -> bool:
    from transformers import PreTrainedModel
    return isinstance(module, PreTrainedModel)


def _hf_init():
    try:
        from transformers import initialization
        return initialization
    except ImportError:  # transformers 4: no loaded-weights flags (parameters are restored instead)
        return None


def init_module_(module: torch.nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation of one module, in place: N(0, std) weights for Linear and Embedding, zero biases,
    LayerNorm to (1, 0). :func:`reinit_parameters_` uses the architecture's own initialiser instead."""
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

    * ``'layers'`` (default, the reference code): one random permutation of the stored layers; layer i takes
      all prunable matrices of layer perm[i] (the model type's layout says which matrices a layer has). The
      values inside each matrix are untouched and the pooler is left as it is. Refused where there are fewer
      than two stored layers: ALBERT (one layer shared by every depth) has nothing to permute; use ``'within'``.
    * ``'within'``: every prunable matrix (pooler included) has its entries randomly permuted, which keeps
      each matrix's value distribution but destroys all of its structure.
    """
    if mode not in ("layers", "within"):
        raise ValueError(f"shuffle mode must be 'layers' or 'within', got {mode!r}")
    modules, layers = prunable_modules(model), _stored_layers(model)
    if mode == "layers":
        check_layer_shuffle(model, layers)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if mode == "within":
            for module in modules.values():
                flat = module.weight.view(-1)
                flat.copy_(flat[torch.randperm(flat.numel(), generator=generator).to(flat.device)])
        else:
            order = sorted(layers)
            perm = torch.randperm(len(order), generator=generator).tolist()
            originals = {i: {k: m.weight.detach().clone() for k, m in layers[i].items()} for i in order}
            for dst, src in zip(order, (order[p] for p in perm)):
                for key, module in layers[dst].items():
                    module.weight.copy_(originals[src][key])
    return model


def check_layer_shuffle(model: torch.nn.Module, layers: Optional[Dict[int, Dict[str, torch.nn.Module]]] = None) -> None:
    """Raise a clear error unless ``shuffle_weights(model, mode='layers')`` has layers to permute: at least two
    stored layers with the same matrices of the same shapes (the runner checks a meta-device skeleton before
    any training)."""
    kind = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
    layers = _stored_layers(model) if layers is None else layers
    if len(layers) < 2:
        raise ValueError(
            f"θ0″ mode='layers' permutes whole layers across depth, but this {kind!r} model stores {len(layers)} "
            "layer(s) of prunable matrices" + (" (ALBERT shares one layer across every depth)" if kind == "albert"
                                               else "")
            + ": nothing to permute. Use mode='within' (shuffle_mode: within in a config)")
    shapes = [{k: tuple(m.weight.shape) for k, m in layer.items()} for layer in layers.values()]
    if any(s != shapes[0] for s in shapes):
        raise ValueError(f"θ0″ mode='layers' needs layers with the same matrices and shapes; this {kind!r} "
                         "model's layers differ. Use mode='within'")


def _stored_layers(model: torch.nn.Module) -> Dict[int, Dict[str, torch.nn.Module]]:
    """The prunable matrices of each stored layer, by their name inside the layer (the pooler aside)."""
    modules, layers = prunable_modules(model), {}
    for name, matrix in prunable_matrices(model).items():
        if matrix.layer is not None and not matrix.pooler:
            layers.setdefault(matrix.layer, {})[matrix.slot] = modules[name]
    return layers
