"""Lottery tickets for pre-trained BERT networks (Chen et al., NeurIPS 2020), native to NNI 3."""
__version__ = "0.1.0"

from .targets import bert_config_list, prunable_modules
from .masks import global_magnitude_masks, random_masks, sparsity_schedule
from .ticket import Ticket, TicketError, prunable_weights
from .pruners import IMPPruner, RandomPruner
from .early_stop import EarlyStop
from .baselines import one_shot_magnitude_ticket, random_ticket, reinitialize, shuffle_weights
from .torch_prune import install_torch_prune, masks_from_torch_prune, remove_torch_prune

__all__ = [
    "__version__", "bert_config_list", "prunable_modules", "global_magnitude_masks", "random_masks",
    "sparsity_schedule", "Ticket", "TicketError", "prunable_weights", "IMPPruner", "RandomPruner", "EarlyStop",
    "one_shot_magnitude_ticket", "random_ticket", "reinitialize", "shuffle_weights",
    "install_torch_prune", "masks_from_torch_prune", "remove_torch_prune",
]
