"""Which weights a ticket prunes.

The paper prunes, in every transformer layer, the query, key and value projections, the attention output
dense, the intermediate dense and the output dense, plus the pooler dense: 73 matrices for bert-base.
Embeddings, biases, LayerNorm and task heads are never pruned.

Which modules those are is the model type's layout (:mod:`nni_bert_tickets.core.architectures`: BERT, RoBERTa,
XLM-R, ELECTRA, DistilBERT, DeBERTa-v2/v3, ModernBERT, ALBERT); an unknown architecture, or a known one whose
matrices are not all found, is refused rather than pruned partially. ``patterns=`` / ``names=`` name the set
by hand.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

import torch
from nni.compression.base.config import select_modules_by_config, trans_legacy_config_list

from .architectures import is_pooler, prunable_matrices

__all__ = ["PRUNABLE_PATTERNS", "prunable_modules", "base_prefix", "ticket_key", "bert_config_list", "is_pooler",
           "check_sparsity", "check_config_list"]
_log = logging.getLogger(__name__)

# the BERT and DistilBERT module names, usable as ``prunable_modules(model, patterns=PRUNABLE_PATTERNS)``; the
# default selection comes from the model type's layout (nni_bert_tickets.core.architectures)
PRUNABLE_PATTERNS = (
    r"(^|\.)encoder\.layer\.\d+\.attention\.self\.(query|key|value)$",
    r"(^|\.)encoder\.layer\.\d+\.attention\.output\.dense$",
    r"(^|\.)encoder\.layer\.\d+\.intermediate\.dense$",
    r"(^|\.)encoder\.layer\.\d+\.output\.dense$",
    r"(^|\.)transformer\.layer\.\d+\.attention\.(q_lin|k_lin|v_lin|out_lin)$",
    r"(^|\.)transformer\.layer\.\d+\.ffn\.(lin1|lin2)$",
    r"(^|\.)pooler\.dense$",
)
GROUP_ID = "bert_tickets"
# a pooler whose mean |w| is below this fraction of the encoder matrices' looks untrained (all-MiniLM-L6-v2: 0.007
# against 0.03-0.07, a ratio of about 0.15); global magnitude pruning would then remove it first
UNTRAINED_POOLER_RATIO = 0.25


def prunable_modules(model: torch.nn.Module, pooler: Optional[bool] = None, *,
                     patterns: Optional[Sequence[str]] = None,
                     names: Optional[Sequence[str]] = None) -> Dict[str, torch.nn.Linear]:
    """The paper's prunable ``nn.Linear`` modules of ``model``, by their full module name, in model order.

    The set is the model type's layout (see :mod:`~nni_bert_tickets.core.architectures`), complete or refused with
    an :class:`~nni_bert_tickets.core.architectures.ArchitectureError`. ``patterns`` (regexes searched in module
    names) or ``names`` (exact module names) name the set by hand instead.

    ``pooler``: ``None`` (default, the paper's set) includes the pooler where the model has one (BERT-style
    classification models do; MLM and question-answering models, and architectures whose pooler is a fresh
    task head, do not); ``True`` requires it (an error if the model has none); ``False`` leaves it out.
    """
    if pooler not in (None, True, False):
        raise ValueError(f"pooler must be None, True or False, got {pooler!r}")
    matrices = prunable_matrices(model, patterns=patterns, names=names)
    if not matrices:
        raise ValueError(f"{type(model).__name__}: the prunable set is empty")
    if pooler is True and not any(m.pooler for m in matrices.values()):
        raise ValueError(f"pooler=True, but {type(model).__name__} has no pooler (MLM and question-answering "
                         "models have none); use pooler=None to prune it only where there is one")
    modules = dict(model.named_modules())
    return {name: modules[name] for name, m in matrices.items() if not (pooler is False and m.pooler)}


def base_prefix(model: torch.nn.Module) -> str:
    """The prefix of the shared body in a Hugging Face model with a task head (``'bert.'``), or ``''``.

    Tickets key their masks relative to the body, so a mask found with one head applies under another.
    """
    prefix = getattr(model, "base_model_prefix", "")
    return f"{prefix}." if prefix and isinstance(getattr(model, prefix, None), torch.nn.Module) else ""


def ticket_key(model: torch.nn.Module, module_name: str) -> str:
    """The ticket key of a prunable module's weight: its name relative to the body, plus ``.weight``."""
    prefix = base_prefix(model)
    name = module_name[len(prefix):] if prefix and module_name.startswith(prefix) else module_name
    return f"{name}.weight"


def bert_config_list(model: torch.nn.Module, sparse_ratio: float, pooler: Optional[bool] = None, *,
                     patterns: Optional[Sequence[str]] = None, names: Optional[Sequence[str]] = None) -> List[dict]:
    """An NNI 3 ``config_list`` selecting the paper's prunable matrices as one global group, weights only.

    ``pooler`` chooses whether the pooler dense is in the group (see :func:`prunable_modules`; default: where
    the model has one, as the paper prunes it). A pooler that looks untrained (mean |w| far below the encoder's,
    as in sentence-transformers checkpoints) is logged, since global magnitude pruning removes it first.

    >>> config_list = bert_config_list(model, 0.7)   # 73 matrices of bert-base, 70 % sparsity overall
    >>> config_list = bert_config_list(model, 0.7, pooler=False)   # the 72 encoder matrices only
    >>> config_list = bert_config_list(model, 0.7, patterns=[r"attention"])   # a set named by hand
    """
    check_sparsity(sparse_ratio)
    modules = prunable_modules(model, pooler, patterns=patterns, names=names)
    if pooler is None:
        _warn_if_pooler_untrained(modules)
    names = list(modules)
    return [{
        "op_names": names,
        "target_names": ["weight"],
        "target_settings": {"weight": {"sparse_ratio": float(sparse_ratio), "global_group_id": GROUP_ID}},
    }]


def check_sparsity(sparsity: float, name: str = "sparse_ratio") -> float:
    """Raise a clear error unless ``0 <= sparsity < 1``."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


def _warn_if_pooler_untrained(modules: Dict[str, torch.nn.Linear]) -> None:
    poolers = [m for n, m in modules.items() if is_pooler(n)]
    encoder = [m for n, m in modules.items() if not is_pooler(n)]
    if not poolers or not encoder:
        return
    with torch.no_grad():
        pooler_mean = float(poolers[0].weight.abs().mean())
        encoder_mean = sum(float(m.weight.abs().mean()) for m in encoder) / len(encoder)
    if pooler_mean < UNTRAINED_POOLER_RATIO * encoder_mean:
        _log.warning(
            "the pooler looks untrained (mean |w| %.4f against %.4f for the encoder matrices): global magnitude "
            "pruning will remove it first, and past a few rounds the classifier sees a constant. Leave it out "
            "of the pruned set with bert_config_list(..., pooler=False) (prune_pooler: false in a config)",
            pooler_mean, encoder_mean)


def check_config_list(model: torch.nn.Module, config_list: List[Dict], who: str) -> None:
    """Fail before wrapping anything if a config entry selects no module or has a bad sparse_ratio."""
    if not config_list:
        raise ValueError(f"{who}: config_list is empty")
    names = {name for name, _ in model.named_modules()}
    prunable = set(prunable_modules(model))
    for i, config in enumerate(trans_legacy_config_list(config_list)):
        unknown = [n for n in config.get("op_names", []) if n not in names]
        if unknown:
            raise ValueError(f"{who}: config_list[{i}] names modules the model does not have: {unknown[:3]}")
        selected = select_modules_by_config(model, config)[0]
        if not selected:
            raise ValueError(f"{who}: config_list[{i}] matches no module of {type(model).__name__}")
        for setting in [config, *config.get("target_settings", {}).values()]:
            if "sparse_ratio" in setting:
                check_sparsity(setting["sparse_ratio"])
        if not config.get("exclude"):
            outside = sorted(set(selected) - prunable)
            if outside:
                raise ValueError(f"{who}: config_list[{i}] selects {outside[:3]}, which are not prunable matrices "
                                 "(a ticket covers the attention, FFN and pooler matrices of the body; embeddings, "
                                 "biases, LayerNorm and task heads are never pruned)")
            targets = [t for t in config.get("target_names", ["weight"]) if t != "weight"]
            if targets:
                raise ValueError(f"{who}: config_list[{i}] targets {targets}; tickets prune weights only")
