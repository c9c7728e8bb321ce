"""Tickets over any subset of the prunable matrices (the pooler left out, a hand-written set), transfer between
models with and without a pooler, and resumes that refuse another task, pruned set or base model."""
import copy
import logging

import pytest
import torch
from torch.nn.utils import prune
from transformers import BertForMaskedLM, BertForQuestionAnswering

from conftest import tiny_bert, toy_evaluator
from nni_bert_tickets import (IMPPruner, RandomPruner, Ticket, TicketError, bert_config_list, install_torch_prune,
                              prunable_modules, prunable_weights, random_ticket, reinitialize, shuffle_weights)
from nni_bert_tickets.core.masks import count_to_prune
from nni_bert_tickets.core.targets import is_pooler, ticket_key


def _torch_masks(weights, amount, prior=None):
    """torch.nn.utils.prune.global_unstructured (L1) over Linear copies holding ``weights``: the reference."""
    modules = []
    for i, w in enumerate(weights):
        m = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        m.weight.data.copy_(w)
        if prior is not None:
            prune.custom_from_mask(m, "weight", prior[i])
        modules.append(m)
    prune.global_unstructured([(m, "weight") for m in modules], pruning_method=prune.L1Unstructured, amount=amount)
    return [m.weight_mask.bool() for m in modules]


def _subset_config(names, sparsity):
    return [{"op_names": names, "target_names": ["weight"],
             "target_settings": {"weight": {"sparse_ratio": sparsity, "global_group_id": "subset"}}}]


def _run_imp(model, config_list, target=0.5, step=0.25):
    """IMP on the toy task; returns the pruner and the covered weights as trained at the end of each round."""
    trained = []

    def keep(record, ticket):
        weights = prunable_weights(model)
        trained.append({k: weights[k].detach().clone() for k in ticket.masks})
    pruner = IMPPruner(model, config_list, toy_evaluator(model, steps=4), step=step, on_round=keep)
    pruner.compress()
    pruner.unwrap_model()
    return pruner, trained


@pytest.mark.parametrize("which", ["no_pooler", "hand_written"])
def test_imp_on_a_subset_equals_torch_global_unstructured_and_leaves_the_rest_dense(which):
    model = tiny_bert(layers=2)
    theta0 = {k: w.detach().clone() for k, w in prunable_weights(model).items()}
    if which == "no_pooler":
        config_list = bert_config_list(model, 0.5, pooler=False)
    else:  # attention of layer 0 and the FFN-in of layer 1
        names = [n for n in prunable_modules(model) if ".layer.0.attention." in n or n.endswith("1.intermediate.dense")]
        config_list = _subset_config(names, 0.5)
    covered = [ticket_key(model, n) for n in config_list[0]["op_names"]]
    pruner, trained = _run_imp(model, config_list)
    assert [sorted(t.masks) for t in pruner.tickets] == [sorted(covered)] * 3
    total = sum(theta0[k].numel() for k in covered)
    # round 1's mask prunes round 0's trained weights; round 2's prunes round 1's, on top of round 1's mask
    ref1 = _torch_masks([trained[0][k] for k in covered], count_to_prune(total, 0.25))
    assert all(torch.equal(pruner.tickets[1].masks[k], m) for k, m in zip(covered, ref1))
    ref2 = _torch_masks([trained[1][k] for k in covered], count_to_prune(total, 0.5) - count_to_prune(total, 0.25),
                        prior=[m.float() for m in ref1])
    assert all(torch.equal(pruner.tickets[2].masks[k], m) for k, m in zip(covered, ref2))
    assert pruner.tickets[2].sparsity == pytest.approx(0.5, abs=1e-3)
    final = prunable_weights(model)
    for key in set(theta0) - set(covered):  # uncovered matrices: no weight pruned, trained like any other
        assert int((final[key] == 0).sum()) == 0 and not torch.equal(final[key], theta0[key])
    if which == "no_pooler":
        assert not any(is_pooler(k) for k in covered) and len(covered) == len(theta0) - 1


def test_a_subset_ticket_saves_loads_and_applies_to_the_covered_matrices_only(tmp_path):
    model = tiny_bert()
    names = [n for n in prunable_modules(model) if ".attention." in n]
    pruner = RandomPruner(model, _subset_config(names, 0.6), seed=3)
    pruner.compress()
    ticket = pruner.ticket(task="rte")
    pruner.unwrap_model()
    ticket.save(tmp_path / "t.safetensors")
    loaded = Ticket.load(tmp_path / "t.safetensors")
    assert sorted(loaded.masks) == sorted(ticket_key(model, n) for n in names) and loaded.encoder_matrices == 12
    for make in (lambda m: None, lambda m: reinitialize(m, seed=1), lambda m: shuffle_weights(m, seed=1)):
        fresh = tiny_bert()
        make(fresh)
        before = {k: w.detach().clone() for k, w in prunable_weights(fresh).items()}
        loaded.apply(fresh, check_weights=False)
        after = prunable_weights(fresh)
        for key in before:
            if key in loaded.masks:
                assert torch.equal(after[key], before[key] * loaded.masks[key])
            else:
                assert torch.equal(after[key], before[key])
    rand = random_ticket(loaded, seed=5)
    assert sorted(rand.masks) == sorted(loaded.masks) and rand.sparsity == pytest.approx(loaded.sparsity)
    hooked = install_torch_prune(tiny_bert(), loaded)
    hooked_names = {n for n, m in prunable_modules(hooked).items() if hasattr(m, "weight_mask")}
    assert hooked_names == set(names)


def test_a_subset_ticket_on_a_model_lacking_one_of_its_matrices_is_refused_before_any_change():
    model = tiny_bert(layers=2)
    names = [n for n in prunable_modules(model) if ".layer.1." in n]
    pruner = RandomPruner(model, _subset_config(names, 0.5))
    pruner.compress()
    ticket = pruner.ticket()
    pruner.unwrap_model()
    small = tiny_bert(layers=1)
    before = {k: w.detach().clone() for k, w in prunable_weights(small).items()}
    with pytest.raises(TicketError, match="another architecture"):
        ticket.apply(small, check_weights=False)
    assert all(torch.equal(prunable_weights(small)[k], v) for k, v in before.items())


def test_config_lists_that_select_nothing_or_more_than_the_prunable_matrices_are_refused():
    model = tiny_bert()
    with pytest.raises(ValueError, match="matches no module"):
        IMPPruner(model, [{"op_names_re": ["nothing"], "sparse_ratio": 0.5}], toy_evaluator(model))
    with pytest.raises(ValueError, match="not prunable matrices"):
        IMPPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}], toy_evaluator(model))  # classifier too
    with pytest.raises(ValueError, match="weights only"):
        RandomPruner(model, [{"op_names": ["bert.pooler.dense"], "target_names": ["weight", "bias"],
                              "sparse_ratio": 0.5}])
    assert not any("_nni_wrapper" in n for n, _ in model.named_modules())
    with pytest.raises(ValueError, match="has no pooler"):
        bert_config_list(BertForMaskedLM(model.config), 0.5, pooler=True)


def _twin(model, cls, tmp_path):
    """The same pre-trained body under another head (saved and loaded, as users move between tasks)."""
    model.save_pretrained(tmp_path / "base")
    return cls.from_pretrained(tmp_path / "base")


@pytest.mark.parametrize("target_cls", [BertForQuestionAnswering, BertForMaskedLM])
def test_a_glue_ticket_transfers_to_a_model_without_a_pooler_and_reports_the_sparsity_applied(
        target_cls, tmp_path, caplog):
    model = tiny_bert()
    pruner = RandomPruner(model, bert_config_list(model, 0.5), seed=2)  # the pooler included
    pruner.compress()
    ticket = pruner.ticket(task="rte")
    pruner.unwrap_model()
    ticket = Ticket.from_model(model, ticket.masks, base_weights=prunable_weights(tiny_bert()), task="rte")
    target = _twin(tiny_bert(), target_cls, tmp_path)
    with pytest.raises(TicketError, match="strict=False"):
        ticket.apply(target)
    with caplog.at_level(logging.WARNING):
        applied = ticket.transfer_to(target, task="squad")
    encoder = {k: m for k, m in ticket.masks.items() if not is_pooler(k)}
    expected = 1 - sum(int(m.sum()) for m in encoder.values()) / sum(m.numel() for m in encoder.values())
    assert applied.sparsity == pytest.approx(expected) and sorted(applied.masks) == sorted(encoder)
    assert "pooler" in caplog.text and f"{100 * expected:.2f}%" in caplog.text
    weights = prunable_weights(target)
    assert all(bool((weights[k][~m] == 0).all()) for k, m in encoder.items())
    other = _twin(tiny_bert(seed=7), target_cls, tmp_path / "other")  # another pre-trained body: refused
    with pytest.raises(TicketError, match="does not hold the weights"):
        ticket.transfer_to(other)


def test_an_untrained_looking_pooler_is_logged_with_how_to_leave_it_out(caplog):
    model = tiny_bert()
    with caplog.at_level(logging.WARNING):
        bert_config_list(model, 0.5)
    assert "pooler looks untrained" not in caplog.text
    with torch.no_grad():
        model.bert.pooler.dense.weight.mul_(0.05)
    with caplog.at_level(logging.WARNING):
        bert_config_list(model, 0.5)
        bert_config_list(model, 0.5, pooler=False)  # left out: nothing to warn about
    assert caplog.text.count("pooler looks untrained") == 1 and "pooler=False" in caplog.text


def test_resume_refuses_another_task_pruned_set_or_base_model(tmp_path):
    def pruner(model, task="rte", pooler=None):
        return IMPPruner(model, bert_config_list(model, 0.2, pooler=pooler), toy_evaluator(model, steps=2),
                         step=0.1, task=task, output_dir=str(tmp_path))
    model = tiny_bert()
    first = pruner(model)
    first.compress()
    first.unwrap_model()
    for other, match in ((lambda: pruner(tiny_bert(), task="mrpc"), "task"),
                         (lambda: pruner(tiny_bert(), pooler=False), "pruned"),
                         (lambda: pruner(tiny_bert(seed=5)), "base_weights")):
        with pytest.raises(ValueError, match=match):
            other().compress()
    again = pruner(tiny_bert())  # the same settings: finished rounds are read back
    again.compress()
    assert [t.masks.keys() for t in again.tickets] == [t.masks.keys() for t in first.tickets]
    assert all(torch.equal(a.masks[k], b.masks[k]) for a, b in zip(again.tickets, first.tickets) for k in a.masks)
    assert copy.deepcopy(again.trajectory) == first.trajectory
