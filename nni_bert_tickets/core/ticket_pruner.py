"""The base of this library's NNI 3 pruners: element-wise masks over pools of targets, masks installed as NNI's
and as zeros in the live weights, and the current masks as a :class:`~.ticket.Ticket`."""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Dict, Optional

import torch
from nni.compression.base.compressor import Pruner

from . import masks as M
from .targets import check_config_list, check_sparsity
from .ticket import Ticket

__all__ = ["_TicketPruner", "_NNIMasks"]
_NNIMasks = Dict[str, Dict[str, torch.Tensor]]


class _TicketPruner(Pruner):
    """Shared plumbing: element-wise masks, pools of targets, masks <-> live weights, tickets."""

    def __init__(self, model, config_list, evaluator=None, existed_wrappers=None):
        check_config_list(model, config_list, type(self).__name__)
        super().__init__(model, config_list, evaluator, existed_wrappers)

    def _set_default_sparse_granularity(self, target_space):  # element-wise masks, as the paper prunes
        return None

    def _pools(self) -> Dict[Any, Dict[str, Any]]:
        """Target spaces by pool: one pool per ``global_group_id``, else one per target; in model order (NNI's
        own order is that of a set of names, which changes with Python's hash seed, and so would a random mask)."""
        pools: Dict[Any, Dict[str, Any]] = defaultdict(dict)
        order = {name: i for i, (name, _) in enumerate(self.bound_model.named_modules())}
        for module_name, spaces in sorted(self._target_spaces.items(), key=lambda item: order.get(item[0], len(order))):
            for target_name, space in spaces.items():
                if space.sparse_ratio is None:
                    continue
                check_sparsity(space.sparse_ratio)
                group = space.global_group_id if space.global_group_id is not None else (module_name, target_name)
                pools[group][f"{module_name}::{target_name}"] = space
        if not pools:
            raise ValueError(f"{type(self).__name__}: the config_list gives no target a sparse_ratio")
        return pools

    def _masks_by_pool(self, strategy: Callable[[Dict[str, torch.Tensor], float, Dict[str, torch.Tensor]], M.Masks],
                       level: Optional[float] = None) -> _NNIMasks:
        """Run a mask strategy on each pool at ``min(level, its sparse_ratio)`` and return NNI masks."""
        out: _NNIMasks = defaultdict(dict)
        for spaces in self._pools().values():
            target = max(space.sparse_ratio for space in spaces.values())
            sparsity = target if level is None else min(level, target)
            weights = {key: space.target.detach() for key, space in spaces.items()}
            current = {key: (space.mask if space.mask is not None else torch.ones_like(space.target)).bool()
                       for key, space in spaces.items()}
            for key, mask in strategy(weights, sparsity, current).items():
                module_name, target_name = key.split("::")
                out[module_name][target_name] = mask.float()
        return dict(out)

    def _install(self, masks: _NNIMasks) -> None:
        """Hand masks to NNI's wrappers and zero the pruned parameters in place."""
        self.update_masks(masks)
        with torch.no_grad():
            for module_name, targets in masks.items():
                for target_name, mask in targets.items():
                    space = self._target_spaces[module_name][target_name]
                    space.target.masked_fill_(~mask.bool().to(space.target.device), 0.0)

    def ticket(self, **meta: Any) -> Ticket:
        """The current masks as a :class:`Ticket`."""
        return Ticket.from_nni_masks(self.bound_model, self.get_masks(), **meta)
