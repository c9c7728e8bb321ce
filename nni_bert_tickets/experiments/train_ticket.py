"""Train a ticket someone gave you: f(x; m ⊙ θ0, γ0) fine-tuned from the start on the task, ``seeds`` times.

``ticket`` names a ticket folder (:meth:`Ticket.save_pretrained`'s, e.g. one of ``tickets/all-MiniLM-L6-v2/``), a
ticket file, or a Hub repository id. The ticket is applied to the freshly loaded ``model`` (refused when its base
weights differ) and trained with the run's settings and a fresh head per seed; each training is a cached unit, so
a killed run resumes. The result, ``tables/ticket-<task>.json``, holds the runs, their mean and sample std, and
what the ticket's card says it scored, for comparison::

    accelerate launch --cpu examples/glue.py --config examples/configs/cpu/table2-mrpc.yaml \\
        --experiment ticket --ticket tickets/all-MiniLM-L6-v2/mrpc-60
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from accelerate import Accelerator
from accelerate.utils import set_seed

from ..core.hub import CARD_FILE, read_card
from ..core.ticket import Ticket
from ..tasks import get_task
from .config import ExperimentConfig
from .imp_run import prepare
from .tables import _save, cached
from .verdicts import stats

__all__ = ["load_ticket", "train_ticket"]
_log = logging.getLogger(__name__)


def load_ticket(source: str) -> Tuple[Ticket, Dict[str, Any]]:
    """The ticket at ``source`` (a ticket file, a ticket folder or a Hub repository id) and its card's ``ticket:``
    facts (empty where there is no card)."""
    if os.path.isfile(source):
        return Ticket.load(source), {}
    ticket = Ticket.from_pretrained(source)
    card = Path(source) / CARD_FILE
    return ticket, (read_card(card).get("ticket") or {}) if card.is_file() else {}


def _identity(ticket: Ticket) -> str:
    """A digest of the masks (and rewind weights): which subnetwork the cached trainings belong to."""
    digest = hashlib.sha256()
    for name in sorted(ticket.masks):
        digest.update(name.encode())
        digest.update(ticket.masks[name].numpy().tobytes())
    for name in sorted(ticket.weights or {}):
        digest.update(name.encode())
        digest.update(ticket.weights[name].float().numpy().tobytes())
    return digest.hexdigest()[:16]


def train_ticket(config: ExperimentConfig, accelerator: Optional[Accelerator] = None) -> Dict[str, Any]:
    """Fine-tune ``config.ticket`` on ``config.task`` with seeds ``seed`` .. ``seed + seeds - 1``."""
    ticket, card = load_ticket(config.ticket)
    if ticket.task and ticket.task != config.task:
        _log.info("the ticket was found on %s and is trained on %s here (a transferred ticket)", ticket.task,
                  config.task)
    identity = _identity(ticket)
    runs = []
    for i in range(config.seeds):
        seed = config.seed + i

        def compute(run_dir, seed=seed):
            model, tuner = prepare(dataclasses.replace(config, seed=seed), accelerator, run_dir / "step-checkpoint")
            ticket.apply(model)  # θ0 with the ticket's mask (or its θi); refused on other base weights
            set_seed(seed)
            return {**tuner.fit(model), "sparsity": ticket.sparsity}
        settings = {**config.training_settings(), "seed": seed, "ticket": identity}
        runs.append(cached(Path(config.output_root), f"ticket-{config.task}", settings, compute, accelerator))
    metric = get_task(config.task, config).metric
    result = {"task": config.task, "ticket": config.ticket, "found_on": ticket.task, "sparsity": ticket.sparsity,
              "metric": metric, "runs": stats([r["default"] for r in runs]),
              "card": {k: card[k] for k in ("metric", "value", "full_model") if k in card}}
    return _save(config, "ticket", result)
