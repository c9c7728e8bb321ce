"""Which weights a BERT ticket prunes.

The paper prunes, in every transformer layer, the query, key and value projections, the attention output
dense, the intermediate dense and the output dense, plus the pooler dense: 73 matrices for bert-base.
Embeddings, biases, LayerNorm and task heads are never pruned.

Names are matched on ``nn.Linear`` modules, so BERT, RoBERTa, ELECTRA, MiniLM (BERT layout) and DistilBERT
(``q_lin``/``k_lin``/``v_lin``/``out_lin``/``ffn.lin1``/``ffn.lin2``) are all recognised.
"""
from __future__ import annotations

import logging
import re
from typing import Dict, List, Optional

import torch

__all__ = ["PRUNABLE_PATTERNS", "prunable_modules", "base_prefix", "ticket_key", "bert_config_list", "is_pooler",
           "check_sparsity"]
_log = logging.getLogger(__name__)

PRUNABLE_PATTERNS = (
    r"(^|\.)encoder\.layer\.\d+\.attention\.self\.(query|key|value)$",
    r"(^|\.)encoder\.layer\.\d+\.attention\.output\.dense$",
    r"(^|\.)encoder\.layer\.\d+\.intermediate\.dense$",
    r"(^|\.)encoder\.layer\.\d+\.output\.dense$",
    r"(^|\.)transformer\.layer\.\d+\.attention\.(q_lin|k_lin|v_lin|out_lin)$",
    r"(^|\.)transformer\.layer\.\d+\.ffn\.(lin1|lin2)$",
    r"(^|\.)pooler\.dense$",
)
_PRUNABLE = re.compile("|".join(f"(?:{p})" for p in PRUNABLE_PATTERNS))
GROUP_ID = "bert_tickets"
_POOLER = re.compile(r"(^|\.)pooler\.dense(\.weight)?$")
# a pooler whose mean |w| is below this fraction of the encoder matrices' looks untrained (all-MiniLM-L6-v2: 0.007
# against 0.03-0.07, a ratio of about 0.15); global magnitude pruning would then remove it first
UNTRAINED_POOLER_RATIO = 0.25


def is_pooler(name: str) -> bool:
    """Whether a module name or ticket key names the pooler dense (the one matrix outside the encoder layers)."""
    return bool(_POOLER.search(name))


def prunable_modules(model: torch.nn.Module, pooler: Optional[bool] = None) -> Dict[str, torch.nn.Linear]:
    """The paper's prunable ``nn.Linear`` modules of ``model``, by their full module name, in model order.

    ``pooler``: ``None`` (default, the paper's set) includes the pooler where the model has one (classification
    models do; MLM and question-answering models do not); ``True`` requires it (an error if the model has none);
    ``False`` leaves it out.
    """
    found = {name: module for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and _PRUNABLE.search(name)}
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no prunable BERT matrices: expected nn.Linear modules named like "
            "'encoder.layer.0.attention.self.query' or 'transformer.layer.0.attention.q_lin'")
    if pooler is True and not any(is_pooler(n) for n in found):
        raise ValueError(f"pooler=True, but {type(model).__name__} has no pooler (MLM and question-answering "
                         "models have none); use pooler=None to prune it only where there is one")
    if pooler is False:
        found = {n: m for n, m in found.items() if not is_pooler(n)}
    return found


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


def bert_config_list(model: torch.nn.Module, sparse_ratio: float, pooler: Optional[bool] = None) -> List[dict]:
    """An NNI 3 ``config_list`` selecting the paper's prunable matrices as one global group, weights only.

    ``pooler`` chooses whether the pooler dense is in the group (see :func:`prunable_modules`; default: where
    the model has one, as the paper prunes it). A pooler that looks untrained (mean |w| far below the encoder's,
    as in sentence-transformers checkpoints) is logged, since global magnitude pruning removes it first.

    >>> config_list = bert_config_list(model, 0.7)   # 73 matrices of bert-base, 70 % sparsity overall
    >>> config_list = bert_config_list(model, 0.7, pooler=False)   # the 72 encoder matrices only
    """
    check_sparsity(sparse_ratio)
    modules = prunable_modules(model, pooler)
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
