"""Which weights a BERT ticket prunes.

The paper prunes, in every transformer layer, the query, key and value projections, the attention output
dense, the intermediate dense and the output dense, plus the pooler dense: 73 matrices for bert-base.
Embeddings, biases, LayerNorm and task heads are never pruned.

Names are matched on ``nn.Linear`` modules, so BERT, RoBERTa, ELECTRA, MiniLM (BERT layout) and DistilBERT
(``q_lin``/``k_lin``/``v_lin``/``out_lin``/``ffn.lin1``/``ffn.lin2``) are all recognised.
"""
from __future__ import annotations

import re
from typing import Dict, List

import torch

__all__ = ["PRUNABLE_PATTERNS", "prunable_modules", "base_prefix", "ticket_key", "bert_config_list"]

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


def prunable_modules(model: torch.nn.Module) -> Dict[str, torch.nn.Linear]:
    """The paper's prunable ``nn.Linear`` modules of ``model``, by their full module name, in model order."""
    found = {name: module for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and _PRUNABLE.search(name)}
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no prunable BERT matrices: expected nn.Linear modules named like "
            "'encoder.layer.0.attention.self.query' or 'transformer.layer.0.attention.q_lin'")
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


def bert_config_list(model: torch.nn.Module, sparse_ratio: float) -> List[dict]:
    """An NNI 3 ``config_list`` selecting the paper's prunable matrices as one global group, weights only.

    >>> config_list = bert_config_list(model, 0.7)   # 73 matrices of bert-base, 70 % sparsity overall
    """
    check_sparsity(sparse_ratio)
    names = list(prunable_modules(model))
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
