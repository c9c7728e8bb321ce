"""Structured lottery tickets: IMP over whole attention heads and FFN channels, physically removed.

Each round trains the current (smaller) network, scores every surviving head and FFN channel by the mean
magnitude of its weights (query/key/value rows and attention-output columns of the head; the intermediate
row and output column of the channel) -- or, with ``importance="taylor"``, by the mean of |w · ∂L/∂w| over the
same weights, the gradients taken on a few training batches of the trained network -- removes the
lowest-scoring ones -- globally, or with ``scope="layer"`` the same fraction in every layer -- and rewinds: a
fresh copy of θ0 is cut down to the survivors with torch-pruning's dependency graph (which carries a head's
removal from the query into key, value and the attention output, and a channel's from the intermediate into the
output dense). The task head keeps its
trained values, as in unstructured IMP. The result saves as a Hugging Face model that loads without this
library (``trust_remote_code=True`` with the modeling file it carries).
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
import torch_pruning as tp

from .architectures import structured_layers
from .targets import base_prefix, check_sparsity

__all__ = ["StructuredIMP", "StructuredTicket", "structured_ticket_model", "save_structured"]
_log = logging.getLogger(__name__)
IMPORTANCES = ("magnitude", "taylor")
SCOPES = ("global", "layer")
_REMOTE = os.path.join(os.path.dirname(__file__), "hf_remote", "modeling_pruned_bert.py")


@dataclass
class StructuredTicket:
    """The surviving heads and FFN channels per layer, by their original indices."""
    heads: List[List[int]]
    channels: List[List[int]]
    head_size: int
    metrics: Dict[str, Any] = field(default_factory=dict)

    @property
    def head_sparsity(self) -> float:
        total = self.metrics.get("total_heads") or 1
        return 1 - sum(map(len, self.heads)) / total

    @property
    def channel_sparsity(self) -> float:
        total = self.metrics.get("total_channels") or 1
        return 1 - sum(map(len, self.channels)) / total


def _layers(model):
    """Per layer: the attention module, its per-head projections, attention output and FFN in/out (the model
    type's layout; BERT, RoBERTa, XLM-R, ELECTRA, DistilBERT, DeBERTa-v2/v3, else a clear error)."""
    return structured_layers(model)


def structured_ticket_model(theta0: torch.nn.Module, ticket: StructuredTicket, example_inputs) -> torch.nn.Module:
    """A copy of ``theta0`` with only the ticket's heads and channels, cut with torch-pruning's graph."""
    model = copy.deepcopy(theta0).eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    d = ticket.head_size
    for layer, heads, channels in zip(_layers(model), ticket.heads, ticket.channels):
        query, ffn = layer.heads[0], layer.ffn_in
        gone_heads = sorted(set(range(query.out_features // d)) - set(heads))
        gone_channels = sorted(set(range(ffn.out_features)) - set(channels))
        if gone_heads:
            idxs = [h * d + k for h in gone_heads for k in range(d)]
            group = graph.get_pruning_group(query, tp.prune_linear_out_channels, idxs=idxs)
            cut = {id(dep.target.module) for dep, _ in group}
            if not all(id(m) in cut for m in (*layer.heads, layer.attention_output)):  # never a partial head
                raise RuntimeError("torch-pruning did not tie the query's heads to all of key, value and the "
                                   "attention output in this model; structured pruning would corrupt it")
            group.prune()
            count, width = layer.head_attrs
            setattr(layer.attention, count, len(heads))
            setattr(layer.attention, width, len(heads) * d)
        if gone_channels:
            graph.get_pruning_group(ffn, tp.prune_linear_out_channels, idxs=gone_channels).prune()
    return model


class StructuredIMP:
    """Find a structured ticket: ``fit(model) -> metrics`` trains and evaluates (e.g. ``FineTuner.fit``).

    ``head_sparsity`` / ``channel_sparsity``: the fractions of all heads / FFN channels to remove in the end
    (rounded to whole heads and channels; every layer keeps ``min_heads`` heads and one channel, so at most
    ``1 - layers * min_heads / heads`` of the heads can go); ``step``: the fraction of the original heads and
    channels removed per round (linear schedule, in (0, 1]). The run has ``ceil(max(targets) / step)`` pruning
    rounds after the dense one. Targets that cannot be reached are refused here, before any training.

    ``importance``: ``"magnitude"`` (mean |w|, the default) or ``"taylor"`` (mean |w · grad|, first-order Taylor, as
    torch-pruning's ``TaylorImportance``); Taylor needs ``gradients(model)``, which runs backward on a few
    training batches of the model it is given (the gradients are cleared before and after each call).

    ``scope``: ``"global"`` (the default: heads and channels ranked across all layers, as unstructured IMP ranks
    weights) or ``"layer"`` (every layer loses the same fraction of its own heads and channels, ranked within the
    layer, as torch-pruning's pruners do without ``global_pruning``).
    """

    def __init__(self, model: torch.nn.Module, fit: Callable[[torch.nn.Module], Dict[str, Any]], example_inputs,
                 head_sparsity: float = 0.5, channel_sparsity: float = 0.5, step: float = 0.1,
                 min_heads: int = 1, importance: str = "magnitude",
                 gradients: Optional[Callable[[torch.nn.Module], None]] = None, scope: str = "global"):
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        if importance not in IMPORTANCES:
            raise ValueError(f"importance must be one of {IMPORTANCES}, got {importance!r}")
        if importance == "taylor" and not callable(gradients):
            raise ValueError("importance='taylor' needs gradients=: a function that runs backward on a few training "
                             "batches of the model it is given")
        self.importance, self.gradients, self.scope = importance, gradients, scope
        check_sparsity(head_sparsity, "head_sparsity")
        check_sparsity(channel_sparsity, "channel_sparsity")
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step <= 1:
            raise ValueError(f"step must be a fraction in (0, 1] of the heads and channels removed per round, "
                             f"got {step!r}")
        config = model.config
        if isinstance(min_heads, bool) or not isinstance(min_heads, int) \
                or not 1 <= min_heads <= config.num_attention_heads:
            raise ValueError(f"min_heads must be a whole number of heads per layer in [1, "
                             f"{config.num_attention_heads}], got {min_heads!r}")
        self.fit, self.example_inputs, self.step, self.min_heads = fit, example_inputs, float(step), min_heads
        self.targets = (float(head_sparsity), float(channel_sparsity))
        layers = _layers(model)  # an unsupported architecture fails here, before any work
        self.head_size = layers[0].heads[0].out_features // config.num_attention_heads
        self.ticket = StructuredTicket(heads=[list(range(config.num_attention_heads)) for _ in layers],
                                       channels=[list(range(l.ffn_in.out_features)) for l in layers],
                                       head_size=self.head_size)
        self.widths = ([len(h) for h in self.ticket.heads], [len(c) for c in self.ticket.channels])  # per layer
        self.totals = (sum(self.widths[0]), sum(self.widths[1]))
        for name, target, widths, minimum, what in (("head_sparsity", self.targets[0], self.widths[0], min_heads,
                                                     "heads"),
                                                    ("channel_sparsity", self.targets[1], self.widths[1], 1,
                                                     "FFN channels")):
            _check_reachable(name, target, widths, minimum, what, scope)
        self.rounds = math.ceil(max(self.targets) / self.step - 1e-9)  # pruning rounds after the dense round 0
        _log.info("structured IMP: %d pruning rounds to %d of %d heads and %d of %d FFN channels removed",
                  self.rounds, self.totals[0] - _total(_keeps(self.targets[0], self.widths[0], scope)), self.totals[0],
                  self.totals[1] - _total(_keeps(self.targets[1], self.widths[1], scope)), self.totals[1])
        self.theta0 = copy.deepcopy(model).eval()
        self.ticket.metrics.update(total_heads=self.totals[0], total_channels=self.totals[1], importance=importance,
                                   scope=scope)
        self.trajectory: List[Dict[str, Any]] = []

    def run(self) -> torch.nn.Module:
        model = structured_ticket_model(self.theta0, self.ticket, self.example_inputs)
        for level in range(self.rounds + 1):  # a fixed number of rounds: the loop cannot run for ever
            metrics = self.fit(model)
            record = {"round": level, "head_sparsity": self.ticket.head_sparsity,
                      "channel_sparsity": self.ticket.channel_sparsity, "metric": metrics.get("default"),
                      "parameters": sum(p.numel() for p in model.parameters())}
            self.trajectory.append(record)
            _log.info("structured IMP round %d: %s", level, record)
            if level == self.rounds:  # both targets reached, to the nearest whole head and channel
                self.ticket.metrics.update(record)
                return model
            self._prune(model, level + 1)
            prefix = base_prefix(model)
            head = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith(prefix)}
            model = structured_ticket_model(self.theta0, self.ticket, self.example_inputs)  # rewind to θ0
            model.load_state_dict(head, strict=False)  # the task head keeps its trained values

    def _prune(self, model: torch.nn.Module, level: int) -> None:
        """Drop the lowest-scoring heads and channels (ranked globally, or within each layer) to this round's counts."""
        d = self.head_size
        if self.importance == "taylor":
            model.zero_grad(set_to_none=True)
            self.gradients(model)
        scores_h, scores_c = [], []
        with torch.no_grad():
            for i, layer in enumerate(_layers(model)):
                sal = {id(m): self._salience(m.weight) for m in (*layer.heads, layer.attention_output,
                                                                 layer.ffn_in, layer.ffn_out)}
                out = sal[id(layer.attention_output)]
                for j, head in enumerate(self.ticket.heads[i]):
                    rows = slice(j * d, (j + 1) * d)
                    parts = [sal[id(m)][rows] for m in layer.heads] + [out[:, rows]]
                    scores_h.append((float(torch.cat([p.flatten() for p in parts]).mean()), i, head))
                score = (sal[id(layer.ffn_in)].mean(1) + sal[id(layer.ffn_out)].mean(0)) / 2
                scores_c += [(float(s), i, c) for s, c in zip(score, self.ticket.channels[i])]
        model.zero_grad(set_to_none=True)
        removed = [t if level >= self.rounds else min(t, level * self.step) for t in self.targets]  # the last: exact
        self.ticket.heads = _keep_top(scores_h, _keeps(removed[0], self.widths[0], self.scope), len(self.widths[0]),
                                      self.min_heads)
        self.ticket.channels = _keep_top(scores_c, _keeps(removed[1], self.widths[1], self.scope), len(self.widths[1]),
                                         1)

    def _salience(self, weight: torch.Tensor) -> torch.Tensor:
        if self.importance == "magnitude":
            return weight.abs()
        if weight.grad is None:
            raise RuntimeError("importance='taylor': gradients(model) left no gradient on an encoder weight; it must "
                               "run backward through the model it is given")
        return (weight * weight.grad).abs()


def _keeps(removed: float, widths: List[int], scope: str):
    """How many to keep: one total over the layers (global scope), or one count per layer (layer scope)."""
    if scope == "global":
        return sum(widths) - round(removed * sum(widths))
    return [w - round(removed * w) for w in widths]


def _total(keep) -> int:
    return sum(keep) if isinstance(keep, list) else keep


def _check_reachable(name: str, target: float, widths: List[int], minimum: int, what: str, scope: str) -> None:
    """Refuse a target that keeping ``minimum`` per layer makes unreachable (it would never be passed)."""
    total, layers = sum(widths), len(widths)
    if scope == "global":
        removable = total - layers * minimum
        if round(target * total) > removable:
            raise ValueError(f"{name} {target} cannot be reached: every one of the {layers} layers keeps at least "
                             f"{minimum} of its {what}, so at most {removable} of the {total} can go "
                             f"({removable / total:.4f}); ask for at most that")
        return
    for i, width in enumerate(widths):
        if round(target * width) > width - minimum:
            raise ValueError(f"{name} {target} cannot be reached with scope='layer': layer {i} keeps at least "
                             f"{minimum} of its {width} {what}, so at most {(width - minimum) / width:.4f} of them "
                             f"can go; ask for at most that")


def _keep_top(scores, keep, layers: int, minimum: int) -> List[List[int]]:
    """Original indices per layer of the highest scores: ``keep`` overall with at least ``minimum`` per layer, or,
    when ``keep`` is a list, ``keep[i]`` of layer i's own."""
    ranked = sorted(scores, key=lambda s: -s[0])
    if isinstance(keep, list):
        return [sorted(idx for _, layer, idx in [r for r in ranked if r[1] == i][:keep[i]]) for i in range(layers)]
    chosen = set()
    for i in range(layers):  # every layer keeps its best ``minimum`` first
        chosen.update((layer, idx) for _, layer, idx in [r for r in ranked if r[1] == i][:minimum])
    for _, layer, idx in ranked:
        if len(chosen) >= keep:
            break
        chosen.add((layer, idx))
    return [sorted(idx for layer, idx in chosen if layer == i) for i in range(layers)]


def save_structured(model: torch.nn.Module, ticket: StructuredTicket, path: str, tokenizer=None) -> None:
    """Save as a Hugging Face model that loads with transformers alone (``trust_remote_code=True``); BERT
    models only (the remote-code class is a BERT): for other types keep the model and ``ticket`` yourself."""
    from .hf_remote.modeling_pruned_bert import PrunedBertConfig

    if getattr(model.config, "model_type", None) != "bert":
        raise ValueError(f"save_structured writes a BERT model with its own modeling file; this is a "
                         f"{model.config.model_type!r} model. Save it with torch.save(model) and the ticket's "
                         "heads/channels, or rebuild it with structured_ticket_model(theta0, ticket, inputs)")

    config = PrunedBertConfig(heads_per_layer=[len(h) for h in ticket.heads],
                              intermediate_sizes=[len(c) for c in ticket.channels],
                              **{k: v for k, v in model.config.to_dict().items()
                                 if k not in ("model_type", "architectures", "auto_map", "transformers_version")})
    config.architectures = ["PrunedBertForSequenceClassification"]
    config.auto_map = {"AutoConfig": "modeling_pruned_bert.PrunedBertConfig",
                       "AutoModelForSequenceClassification": "modeling_pruned_bert.PrunedBertForSequenceClassification"}
    original, model.config = model.config, config
    try:
        os.makedirs(path, exist_ok=True)
        model.save_pretrained(path)
    finally:
        model.config = original
    shutil.copy(_REMOTE, os.path.join(path, "modeling_pruned_bert.py"))
    with open(os.path.join(path, "structured_ticket.json"), "w") as f:
        json.dump({"heads": ticket.heads, "channels": ticket.channels, "head_size": ticket.head_size,
                   "metrics": ticket.metrics}, f, indent=1, default=str)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
