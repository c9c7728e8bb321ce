"""The Table-2 weight baselines θ0′ and θ0″ as NNI 3 pruners.

Both take a mask found elsewhere (a :class:`~nni_bert_tickets.Ticket`, or another pruner's masks as
``compress()`` returns them) and put it on other starting weights:

* :class:`ReinitPruner` (θ0′): the body freshly drawn with the architecture's own initialiser
  (:func:`~nni_bert_tickets.core.baselines.reinitialize`);
* :class:`ShuffledPruner` (θ0″): the pre-trained weights shuffled, across layers or within each matrix
  (:func:`~nni_bert_tickets.core.baselines.shuffle_weights`).

They follow :class:`~nni_bert_tickets.RandomPruner`'s conventions: ``Pruner(model, config_list, ...)``,
``compress()`` returning ``(model, masks)``, ``unwrap_model()``, ``get_masks()``, ``ticket()``, a seed.
The config list says which matrices the mask is put on; it must select exactly the matrices the mask covers.
A ``sparse_ratio`` is not needed (the sparsity is the mask's); where one is given it must be the mask's.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Union

import torch
from nni.compression.base.config import select_modules_by_config, trans_legacy_config_list
from nni.compression.base.setting import canonicalize_settings
from nni.compression.utils.evaluator import Evaluator

from . import masks as M
from .baselines import check_layer_shuffle, reinitialize, shuffle_weights
from .ticket_pruner import _NNIMasks, _TicketPruner
from .targets import check_config_list, prunable_modules, ticket_key
from .ticket import Ticket, TicketError

__all__ = ["ReinitPruner", "ShuffledPruner", "mask_config_list"]
GivenMask = Union[Ticket, Mapping[str, Mapping[str, torch.Tensor]]]


def mask_config_list(model: torch.nn.Module, mask: GivenMask) -> List[Dict[str, Any]]:
    """The NNI ``config_list`` that selects exactly the matrices ``mask`` covers (a ticket, or NNI masks)."""
    return [{"op_names": list(_module_masks(model, mask)), "target_names": ["weight"]}]


class _GivenMaskPruner(_TicketPruner):
    """A given mask on starting weights that :meth:`_draw_weights` makes (in place, on the unwrapped model)."""
    algorithm = ""  # what its tickets record, as the runner names the baseline

    def __init__(self, model: torch.nn.Module, config_list: List[Dict], evaluator: Evaluator | None = None, *,
                 mask: Optional[GivenMask] = None, seed: int = 0, existed_wrappers=None):
        who = type(self).__name__
        if mask is None or (not isinstance(mask, Ticket) and not mask):
            raise ValueError(f"{who} needs a mask to apply: mask=a Ticket (e.g. IMPPruner(...).tickets[-1] or "
                             "Ticket.load(path)) or another pruner's masks (the second value of its compress())")
        self._given = _module_masks(model, mask)  # a mask for another model fails here, before anything is wrapped
        _check_ratios(_selected(model, config_list, self._given, who), self._given, who)
        super().__init__(model, config_list, evaluator, existed_wrappers)
        self.seed, self._drawn = seed, False

    def _draw_weights(self, model: torch.nn.Module) -> None:  # abstract: each baseline draws its own weights
        raise NotImplementedError(f"{type(self).__name__} must say how it draws its starting weights "
                                  "(ReinitPruner re-initialises, ShuffledPruner shuffles)")

    def ticket(self, **meta: Any) -> Ticket:
        """The mask on these weights as a :class:`Ticket` (fingerprinted on them), named after the baseline."""
        return super().ticket(**{"algorithm": self.algorithm, "seed": self.seed, **meta})

    def _single_compress(self, max_steps, max_epochs):
        """Draw the starting weights on the plain model (the initialisers and permutations see its own modules and
        parameters, exactly as the functions do), hand them to NNI's wrappers, then install the mask. The weights
        are drawn once: a second ``compress()`` gives the same model and masks."""
        if not self._drawn:
            self._draw_once()
        self._install({name: {"weight": mask.float()} for name, mask in self._given.items()})

    def _draw_once(self) -> None:
        self.unwrap_model()
        try:
            self._draw_weights(self.bound_model)
            with torch.no_grad():
                for module_name, spaces in self._target_spaces.items():
                    module = self.bound_model.get_submodule(module_name)
                    spaces["weight"].target.copy_(module.weight)
        finally:
            self.wrap_model()
        self._drawn = True

    def compress(self) -> Tuple[torch.nn.Module, _NNIMasks]:  # type: ignore[override]
        return super().compress(None, None)


class ReinitPruner(_GivenMaskPruner):
    """θ0′ (Table 2, random re-initialisation): the given mask on a body freshly drawn with the architecture's own
    initialiser, seeded; exactly ``reinitialize(model, seed)`` then ``ticket.apply(model, check_weights=False)``.

    >>> pruner = ReinitPruner(model, mask_config_list(model, ticket), mask=ticket, seed=0)
    >>> model, masks = pruner.compress()
    """

    algorithm = "random_reinit"

    def _draw_weights(self, model: torch.nn.Module) -> None:
        reinitialize(model, seed=self.seed)


class ShuffledPruner(_GivenMaskPruner):
    """θ0″ (Table 2, shuffled pre-trained weights): the given mask on the pre-trained weights shuffled, seeded;
    exactly ``shuffle_weights(model, seed, mode)`` then ``ticket.apply(model, check_weights=False)``.

    ``mode='layers'`` (the reference code) permutes whole stored layers; ``'within'`` permutes the entries of every
    prunable matrix. A model with no layers to permute (ALBERT) is refused for ``'layers'`` before it is wrapped.
    """

    def __init__(self, model: torch.nn.Module, config_list: List[Dict], evaluator: Evaluator | None = None, *,
                 mask: Optional[GivenMask] = None, seed: int = 0, mode: Literal["layers", "within"] = "layers",
                 existed_wrappers=None):
        if mode not in ("layers", "within"):
            raise ValueError(f"shuffle mode must be 'layers' or 'within', got {mode!r}")
        if mode == "layers":
            check_layer_shuffle(model)
        self.shuffle_mode = mode  # NNI keeps its compressor kind in `mode`
        super().__init__(model, config_list, evaluator, mask=mask, seed=seed, existed_wrappers=existed_wrappers)

    algorithm = "shuffled"

    def _draw_weights(self, model: torch.nn.Module) -> None:
        shuffle_weights(model, seed=self.seed, mode=self.shuffle_mode)


def _module_masks(model: torch.nn.Module, mask: GivenMask) -> Dict[str, torch.Tensor]:
    """The mask as ``{module_name: bool mask}`` for ``model``; a :class:`TicketError` if it is for another model."""
    modules = prunable_modules(model)
    if isinstance(mask, Ticket):
        fitted = mask.fit(model, strict=True)
        return {name: fitted[ticket_key(model, name)] for name in modules if ticket_key(model, name) in fitted}
    if not isinstance(mask, Mapping):
        raise TypeError(f"mask must be a Ticket or NNI masks {{module_name: {{'weight': mask}}}}, "
                        f"got {type(mask).__name__}")
    unknown = sorted(set(mask) - set(modules))
    if unknown:
        raise TicketError(f"the masks are for another model: {type(model).__name__} has no prunable matrix "
                          f"{unknown[:3]}")
    out = {}
    for name in modules:
        if name not in mask:
            continue
        targets = mask[name]
        if not isinstance(targets, Mapping) or targets.get("weight") is None:
            raise TicketError(f"the masks for {name} hold no 'weight' mask (NNI's {{module_name: {{'weight': mask}}}})")
        shape = tuple(modules[name].weight.shape)
        if tuple(targets["weight"].shape) != shape:
            raise TicketError(f"the masks are for another model: {name} has a mask of shape "
                              f"{tuple(targets['weight'].shape)}, the model's weight {shape}")
        out[name] = targets["weight"].detach().to("cpu").bool()
    return out


def _selected(model: torch.nn.Module, config_list: List[Dict], given: Mapping[str, torch.Tensor],
              who: str) -> Dict[str, Dict[str, Any]]:
    """The weight settings NNI will give each selected matrix (checked before anything is wrapped); the config
    list must select exactly the matrices the mask covers."""
    check_config_list(model, config_list, who)
    selected: Dict[str, Dict[str, Any]] = {}
    for config in trans_legacy_config_list(config_list):  # NNI's own selection (legacy excludes folded in)
        modules, public, _ = select_modules_by_config(model, config)
        for name, module in modules.items():  # a later config entry overrides an earlier one, as in NNI
            selected[name] = canonicalize_settings(module, public, "pruning").get("weight", {})
    missing, extra = sorted(set(selected) - set(given)), sorted(set(given) - set(selected))
    if missing or extra:
        raise ValueError(
            f"{who}: the config_list and the mask cover different matrices"
            + (f"; the mask has none for {missing[:3]}" if missing else "")
            + (f"; the config_list does not select {extra[:3]}" if extra else "")
            + ". mask_config_list(model, mask) selects exactly the mask's matrices")
    return selected


def _check_ratios(settings: Mapping[str, Mapping[str, Any]], given: Mapping[str, torch.Tensor], who: str) -> None:
    """A ``sparse_ratio`` in the config list must be what the mask prunes over the same group of matrices."""
    groups: Dict[Any, Dict[str, float]] = defaultdict(dict)
    for name, setting in settings.items():
        if setting.get("sparse_ratio") is not None:
            group = setting.get("global_group_id")
            groups[name if group is None else ("group", group)][name] = setting["sparse_ratio"]
    for group in groups.values():
        total = sum(given[name].numel() for name in group)
        pruned = sum(int((~given[name]).sum()) for name in group)
        ratio = max(group.values())
        if M.count_to_prune(total, ratio) != pruned:
            raise ValueError(f"{who}: the config_list asks for sparse_ratio {ratio} over {len(group)} matrices, but "
                             f"the mask prunes {pruned / total:.4f} of them. The mask sets the sparsity: leave "
                             "sparse_ratio out (see mask_config_list) or give the mask's")
