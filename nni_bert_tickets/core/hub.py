"""Tickets on the Hugging Face Hub's terms: a folder with the ticket file and a model card.

A ticket folder holds ``ticket.safetensors`` (:meth:`Ticket.save`'s file, with its SHA-256 digest) and
``README.md``, a model card whose YAML metadata names the base model, the task, the sparsity, the metric and its
value, the full model's value, how the ticket was found, the license and the paper to cite. The card's
``ticket:`` entry repeats the file's sparsity, base model and digest, and loading refuses a card that disagrees
with its file. :func:`from_pretrained` reads a local folder, or a Hub repository through ``huggingface_hub``
(its cache when ``HF_HUB_OFFLINE=1``); :func:`push_to_hub` uploads the folder :func:`save_pretrained` writes.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Union

import yaml
from safetensors import safe_open

from .digest import DIGEST_KEY
from .files import atomic_write_text
from .errors import TicketError

Ticket = Any  # a .ticket.Ticket; that module imports this one, so its class comes in as a value (``load``)

__all__ = ["TICKET_FILE", "CARD_FILE", "CITATION", "save_pretrained", "from_pretrained", "push_to_hub", "load_folder",
           "read_card"]
_log = logging.getLogger(__name__)
TICKET_FILE = "ticket.safetensors"
CARD_FILE = "README.md"
CITATION = """@inproceedings{chen2020lottery,
  title = {The Lottery Ticket Hypothesis for Pre-trained {BERT} Networks},
  author = {Chen, Tianlong and Frankle, Jonathan and Chang, Shiyu and Liu, Sijia and Zhang, Yang and
            Wang, Zhangyang and Carbin, Michael},
  booktitle = {Advances in Neural Information Processing Systems},
  volume = {33},
  year = {2020}
}"""
_TASK_TYPES = {"squad": "question-answering", "mlm": "fill-mask"}  # the rest: text classification (GLUE)
_MODEL_CLASSES = {"squad": "AutoModelForQuestionAnswering", "mlm": "AutoModelForMaskedLM"}


def save_pretrained(ticket: Ticket, folder: Union[str, os.PathLike], *, metric: Optional[str] = None,
                    value: Optional[float] = None, full_model: Union[None, float, Mapping[str, Any]] = None,
                    found_by: Optional[str] = None, base_model: Optional[str] = None, license: str = "mit",
                    dataset: Optional[str] = None, dataset_config: Optional[str] = None, notes: str = "",
                    include_weights: bool = True) -> Path:
    """Write ``ticket.safetensors`` and its model card into ``folder``; returns the folder.

    ``metric`` and ``value``: the ticket's result (default: the value the ticket recorded, ``metrics['metric']``);
    ``full_model``: the dense model's value, a number or ``{mean, std, runs}``; ``found_by``: how the ticket was
    found (default: from its algorithm, schedule, rewind point and seed); ``base_model``: the checkpoint's Hub id,
    recorded in the file too when it differs from the path the ticket was found from; ``dataset`` (Hub id) and
    ``dataset_config`` for the card's results; ``notes``: a paragraph on the setting (data, scale)."""
    if base_model and base_model != ticket.base_model:
        ticket = dataclasses.replace(ticket, base_model=base_model)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file; save_pretrained writes a folder")
    ticket.save(folder / TICKET_FILE, include_weights=include_weights)
    with safe_open(str(folder / TICKET_FILE), framework="pt") as f:
        digest = (f.metadata() or {})[DIGEST_KEY]
    value = ticket.metrics.get("metric") if value is None else value
    full = {"mean": full_model} if isinstance(full_model, (int, float)) else dict(full_model or {})
    facts = {"file": TICKET_FILE, "task": ticket.task, "sparsity": round(ticket.sparsity, 6),
             "matrices": len(ticket.masks), "metric": metric, "value": value,
             "full_model": full or None, "found_by": found_by or _found_by(ticket), "algorithm": ticket.algorithm,
             "rewind": ticket.rewind, "seed": ticket.seed, "round": ticket.round, "fingerprint": ticket.fingerprint,
             DIGEST_KEY: digest, "theta0": ticket.theta0 or None, "version": ticket.version}
    atomic_write_text(folder / CARD_FILE, _card(ticket, {k: v for k, v in facts.items() if v is not None},
                                                license, dataset, dataset_config, notes))
    return folder


def _found_by(ticket: Ticket) -> str:
    rewind = {None: "", "none": "no rewinding (standard pruning)", "theta0": "surviving weights rewound to θ0"}.get(
        ticket.rewind, f"surviving weights rewound to θi ({ticket.rewind})")
    return (f"{'iterative magnitude pruning' if ticket.algorithm == 'imp' else ticket.algorithm}"
            f"{f' ({ticket.schedule})' if ticket.schedule else ''}{f', {rewind}' if rewind else ''}"
            f"{f', round {ticket.round}' if ticket.round is not None else ''}"
            f"{f', seed {ticket.seed}' if ticket.seed is not None else ''}")


def _card(ticket: Ticket, facts: Dict[str, Any], license: str, dataset: Optional[str], dataset_config: Optional[str],
          notes: str) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    task = ticket.task or "unknown task"
    results = None
    if facts.get("metric") and facts.get("value") is not None:
        results = [EvalResult(task_type=_TASK_TYPES.get(task, "text-classification"), dataset_type=dataset or task,
                              dataset_name=f"{dataset or task}{f' {dataset_config}' if dataset_config else ''}",
                              dataset_config=dataset_config, metric_type=facts["metric"], metric_name=facts["metric"],
                              metric_value=facts["value"])]
    data = ModelCardData(base_model=ticket.base_model or None, license=license, library_name="nni_bert_tickets",
                         tags=["lottery-ticket", "pruning", "sparse", *([task] if ticket.task else [])],
                         model_name=f"{task} ticket at {facts['sparsity']:.0%} sparsity", eval_results=results,
                         ticket=facts)
    full = facts.get("full_model") or {}
    rows = [("task", task), ("base model", ticket.base_model or "unknown"), ("sparsity", f"{facts['sparsity']:.2%}"),
            ("metric", facts.get("metric", "not recorded")), ("value", facts.get("value", "not recorded")),
            ("full model", ", ".join(f"{k} {v}" for k, v in full.items()) or "not recorded"),
            ("found by", facts["found_by"]), *([("θ0", ticket.theta0)] if ticket.theta0 else []),
            ("SHA-256 of its masks and metadata", f"`{facts[DIGEST_KEY]}` (checked on loading)")]
    body = [f"# A lottery ticket for {ticket.base_model or 'a BERT model'} on {task}", "",
            "Masks (which weights to keep) of a subnetwork of the pre-trained model, found with nni_bert_tickets "
            "(the Lottery Ticket Hypothesis for pre-trained BERT networks, Chen et al. 2020). The file holds masks "
            "packed 8 per byte" + (", and the weights to rewind to" if ticket.weights is not None else "")
            + "; the base model's own weights come from its checkpoint.", "",
            "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
    if notes:
        body += [notes, ""]
    auto = _MODEL_CLASSES.get(task, "AutoModelForSequenceClassification")
    body += ["## Use", "", "```python", f"from transformers import {auto}",
             "from nni_bert_tickets import Ticket", "",
             "ticket = Ticket.from_pretrained(\"<this repository or folder>\")",
             f"model = {auto}.from_pretrained(\"{ticket.base_model or '<base model>'}\")",
             "ticket.apply(model)  # pruned weights zeroed and kept at zero while fine-tuning", "```", "",
             "`apply` refuses a model whose weights are not the ones the ticket was found on (its fingerprint).", "",
             "## Citation", "", "```bibtex", CITATION, "```", ""]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)


def read_card(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The YAML metadata of a model card (``{}`` for a card without any)."""
    text = Path(path).read_text(encoding="utf-8")
    if not text.startswith("---"):
        return {}
    try:
        meta = yaml.safe_load(text.split("---", 2)[1])
    except (IndexError, yaml.YAMLError) as err:
        raise TicketError(f"{path}: the model card's YAML metadata is unreadable: {err}") from err
    return meta if isinstance(meta, dict) else {}


def from_pretrained(repo_id_or_folder: Union[str, os.PathLike], revision: Optional[str] = None, *,
                    load: Callable[[Path], Ticket], cache_dir: Optional[str] = None,
                    token: Optional[str] = None) -> Ticket:
    """A ticket from a folder written by :func:`save_pretrained`, or from a Hub repository (``owner/name``) at
    ``revision``; offline (``HF_HUB_OFFLINE=1``) a repository is read from the Hub cache. ``load`` reads a ticket
    file (``Ticket.load``)."""
    source = os.fspath(repo_id_or_folder)
    if os.path.isdir(source):
        if revision is not None:
            raise ValueError(f"{source} is a local folder: it has no revision {revision!r} (that is for Hub repos)")
        return load_folder(source, load=load)
    if os.path.exists(source):
        raise TicketError(f"{source} is a file, not a ticket folder (read a ticket file with Ticket.load)")
    if not _is_repo_id(source):
        raise FileNotFoundError(f"no ticket folder at {source} (nor is it a Hub repository id, owner/name)")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
    try:
        folder = snapshot_download(source, revision=revision, cache_dir=cache_dir, token=token,
                                   allow_patterns=[TICKET_FILE, CARD_FILE])
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        where = cache_dir or constants.HF_HUB_CACHE
        raise FileNotFoundError(
            f"{source!r} is not a folder here, and the Hub cannot be reached"
            f"{' (HF_HUB_OFFLINE is set)' if constants.HF_HUB_OFFLINE else ''}: the Hub cache {where} has no copy of "
            f"it{f' at revision {revision}' if revision else ''}. Download it once online, or pass a ticket folder"
        ) from err
    return load_folder(folder, name=f"{source}{f'@{revision}' if revision else ''}", load=load)


def _is_repo_id(source: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    if source.startswith((".", "/", "~")) or source.count("/") > 1 or os.sep != "/" and os.sep in source:
        return False
    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


def load_folder(folder: Union[str, os.PathLike], name: Optional[str] = None, *,
                load: Callable[[Path], Ticket]) -> Ticket:
    """The ticket of a ticket folder, checked against its model card when there is one."""
    folder = Path(folder)
    path = folder / TICKET_FILE
    if not path.is_file():
        others = sorted(p.name for p in folder.glob("*.safetensors"))
        raise TicketError(f"{name or folder} holds no ticket file {TICKET_FILE}"
                          + (f" (it has {', '.join(others)})" if others else "") + ": not a ticket folder")
    ticket = load(path)
    card = folder / CARD_FILE
    if card.is_file():
        _check_card(card, read_card(card).get("ticket"), ticket, path)
    else:
        _log.info("%s has no model card (%s): the ticket file alone is read", name or folder, CARD_FILE)
    return ticket


def _check_card(card: Path, facts: Any, ticket: Ticket, path: Path) -> None:
    """Refuse a card whose ``ticket:`` entry disagrees with the file: another sparsity, base model or file."""
    if not isinstance(facts, dict):
        raise TicketError(f"{card} has no 'ticket:' entry in its YAML metadata: not a ticket's model card")
    with safe_open(str(path), framework="pt") as f:
        digest = (f.metadata() or {}).get(DIGEST_KEY)
    disagree = []
    if "sparsity" in facts and abs(float(facts["sparsity"]) - ticket.sparsity) > 5e-6:
        disagree.append(f"sparsity {facts['sparsity']} in the card, {ticket.sparsity:.6f} in the file")
    base = read_card(card).get("base_model")
    if base and ticket.base_model and base != ticket.base_model:
        disagree.append(f"base model {base!r} in the card, {ticket.base_model!r} in the file")
    if facts.get("task") and ticket.task and facts["task"] != ticket.task:
        disagree.append(f"task {facts['task']!r} in the card, {ticket.task!r} in the file")
    if facts.get(DIGEST_KEY) and digest and facts[DIGEST_KEY] != digest:
        disagree.append("the card describes another file (its SHA-256 differs)")
    if disagree:
        raise TicketError(f"{card} and {path.name} disagree: {'; '.join(disagree)}. Rewrite the folder with "
                          "Ticket.save_pretrained, or fix the card")


def push_to_hub(ticket: Ticket, repo_id: str, *, private: Optional[bool] = None, token: Optional[str] = None,
                revision: Optional[str] = None, commit_message: Optional[str] = None, create_pr: bool = False,
                **card: Any):
    """Upload the folder :func:`save_pretrained` writes (``card``: its keyword arguments) to the model repository
    ``repo_id``, creating it if needed; returns ``huggingface_hub``'s commit info."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"{repo_id!r} is not a Hub repository id (owner/name): {err}") from err
    if constants.HF_HUB_OFFLINE:
        raise RuntimeError("HF_HUB_OFFLINE is set: push_to_hub needs the network; write the folder with "
                           "save_pretrained and upload it later")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="ticket-") as tmp:
        save_pretrained(ticket, tmp, **card)
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, repo_type="model", revision=revision,
                                 create_pr=create_pr,
                                 commit_message=commit_message or f"Upload {ticket.task or ''} ticket "
                                                                  f"({ticket.sparsity:.0%} sparse)")
