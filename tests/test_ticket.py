"""Tickets as files, applying and transferring them, torch interop, baselines, resuming IMP."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForSequenceClassification, AutoModelForMaskedLM

from conftest import tiny_bert, toy_evaluator
from nni_bert_tickets import (IMPPruner, Ticket, TicketError, bert_config_list, global_magnitude_masks,
                              install_torch_prune, masks_from_torch_prune, one_shot_magnitude_ticket,
                              prunable_weights, random_ticket, reinitialize, remove_torch_prune, shuffle_weights)
from nni_bert_tickets.core.targets import prunable_modules


def _ticket(model, sparsity=0.5, **meta):
    return Ticket.from_model(model, global_magnitude_masks(prunable_weights(model), sparsity), **meta)


def test_save_load_roundtrip_keeps_masks_and_metadata(tmp_path):
    model = tiny_bert()
    ticket = _ticket(model, task="rte", seed=3, round=2, schedule="linear:0.1", metrics={"accuracy": 0.6})
    path = tmp_path / "t.safetensors"
    ticket.save(path)
    loaded = Ticket.load(path)
    assert loaded.masks.keys() == ticket.masks.keys()
    assert all(torch.equal(loaded.masks[k], ticket.masks[k]) for k in ticket.masks)
    assert (loaded.task, loaded.seed, loaded.round, loaded.fingerprint) == ("rte", 3, 2, ticket.fingerprint)
    assert loaded.metrics == {"accuracy": 0.6} and loaded.version == ticket.version
    assert loaded.sparsity == pytest.approx(0.5, abs=1e-3)
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]  # no temporary left behind
    mask = os.umask(0o022)
    try:
        ticket.save(path)
        assert path.stat().st_mode & 0o777 == 0o644  # readable by others, as a file meant to be shared
    finally:
        os.umask(mask)


def test_truncated_foreign_and_missing_files_are_clear_errors(tmp_path):
    model = tiny_bert()
    good = tmp_path / "good.safetensors"
    _ticket(model).save(good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(TicketError, match="truncated or corrupt"):
        Ticket.load(truncated)
    with pytest.raises(TicketError, match="not an nni_bert_tickets ticket"):
        Ticket.load(foreign)
    with pytest.raises(TicketError, match="truncated or corrupt"):
        Ticket.load(garbage)
    with pytest.raises(FileNotFoundError):
        Ticket.load(tmp_path / "absent.safetensors")


def test_failed_save_writes_nothing(tmp_path, monkeypatch):
    import nni_bert_tickets.core.ticket as ticket_module
    def boom(*args, **kwargs):
        open(args[1], "wb").write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(ticket_module, "save_file", boom)
    with pytest.raises(OSError):
        _ticket(tiny_bert()).save(tmp_path / "t.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_ticket_for_another_architecture_or_other_weights_is_refused():
    ticket = _ticket(tiny_bert(layers=2))
    with pytest.raises(TicketError, match="another architecture"):
        ticket.apply(tiny_bert(layers=3), strict=True)
    with pytest.raises(TicketError, match="another architecture"):
        ticket.apply(tiny_bert(layers=1))
    with pytest.raises(TicketError, match="does not hold the weights"):
        ticket.apply(tiny_bert(seed=1))  # same shapes, different base weights
    ticket.apply(tiny_bert(seed=1), check_weights=False)  # on purpose, as the baselines do
    for smaller, larger in ((1, 2), (2, 3)):  # strict=False (transfer_to) tolerates a missing pooler only
        with pytest.raises(TicketError, match="another architecture"):
            _ticket(tiny_bert(layers=larger)).transfer_to(tiny_bert(layers=smaller))
        with pytest.raises(TicketError, match="another architecture"):
            _ticket(tiny_bert(layers=smaller)).apply(tiny_bert(layers=larger), strict=False, check_weights=False)
    with pytest.raises(TicketError, match="another architecture"):  # torch interop checks the same way
        install_torch_prune(tiny_bert(layers=3), ticket)
    assert not any(hasattr(m, "weight_mask") for m in prunable_modules(tiny_bert(layers=3)).values())


def test_a_ticket_whose_rewind_weights_do_not_fit_changes_nothing():
    model = tiny_bert()
    ticket = _ticket(model)
    ticket.weights = {k: v.detach().clone() + 1 for k, v in model.bert.named_parameters()}
    ticket.weights["pooler.dense.weight"] = torch.zeros(3, 3)  # one misfit, checked before any copy
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with pytest.raises(TicketError, match="pooler.dense.weight"):
        ticket.apply(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_ticket_file_whose_metadata_is_not_an_object_is_a_clear_error(tmp_path):
    path = tmp_path / "odd.safetensors"
    save_file({"mask/x": torch.ones(2, dtype=torch.bool)}, str(path),
              metadata={"format": "nni_bert_tickets.ticket/1", "meta": "[1, 2]"})
    with pytest.raises(TicketError, match="not a JSON object"):
        Ticket.load(path)


def test_apply_zeroes_pruned_and_is_idempotent_and_transfer_to_new_head(minilm_path):
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    ticket = _ticket(model, 0.7, task="sst2")
    ticket.apply(model)
    ticket.apply(model)  # the fingerprint ignores pruned positions: re-applying is fine
    assert all(bool((prunable_weights(model)[k][~m] == 0).all()) for k, m in ticket.masks.items())
    other = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=3)
    applied = ticket.transfer_to(other, task="stsb")
    assert applied.ticket.task == "stsb" and applied.ticket.metrics["source_task"] == "sst2"
    mlm = AutoModelForMaskedLM.from_pretrained(minilm_path)  # no pooler: 36 of 37 matrices
    assert len(prunable_modules(mlm)) == 36
    mlm_ticket = _ticket(mlm, 0.7, task="mlm")
    target = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    pooler = target.bert.pooler.dense.weight.detach().clone()
    applied = mlm_ticket.transfer_to(target)  # the MLM ticket covers no pooler: it stays dense and untouched
    assert torch.equal(target.bert.pooler.dense.weight, pooler) and len(applied.masks) == 36


def test_torch_prune_interop_gives_same_outputs_and_masks():
    ticket = _ticket(tiny_bert(), 0.6)
    ours, theirs = tiny_bert(), tiny_bert()
    ticket.apply(ours)
    install_torch_prune(theirs, ticket)
    x = torch.randint(1, 64, (2, 9))
    assert torch.equal(ours(input_ids=x).logits, theirs(input_ids=x).logits)
    back = masks_from_torch_prune(theirs)
    assert all(torch.equal(back[k], m) for k, m in ticket.masks.items())
    remove_torch_prune(theirs)
    assert not any(hasattr(m, "weight_orig") for m in prunable_modules(theirs).values())
    assert all(torch.equal(prunable_weights(theirs)[k], prunable_weights(ours)[k]) for k in ticket.masks)


def test_baselines():
    model = tiny_bert()
    imp = _ticket(model, 0.5)
    rand = random_ticket(imp, seed=1)
    assert rand.sparsity == pytest.approx(imp.sparsity) and rand.algorithm == "random"
    assert any(not torch.equal(rand.masks[k], imp.masks[k]) for k in imp.masks)
    oneshot = one_shot_magnitude_ticket(model, 0.5)
    assert all(torch.equal(oneshot.masks[k], imp.masks[k]) for k in imp.masks)

    before = {k: v.detach().clone() for k, v in prunable_weights(model).items()}
    shuffle_weights(model, seed=0, mode="layers")
    after = prunable_weights(model)
    q0, q1 = "encoder.layer.0.attention.self.query.weight", "encoder.layer.1.attention.self.query.weight"
    assert {tuple(after[q0].flatten()[:3].tolist()), tuple(after[q1].flatten()[:3].tolist())} == \
           {tuple(before[q0].flatten()[:3].tolist()), tuple(before[q1].flatten()[:3].tolist())}
    assert torch.equal(after["pooler.dense.weight"], before["pooler.dense.weight"])
    within = tiny_bert()
    shuffle_weights(within, seed=0, mode="within")
    w = prunable_weights(within)[q0]
    assert not torch.equal(w, before[q0]) and torch.equal(w.flatten().sort().values, before[q0].flatten().sort().values)

    fresh = tiny_bert()
    reinitialize(fresh, seed=5)
    assert not torch.equal(prunable_weights(fresh)[q0], before[q0])
    with pytest.raises(TicketError):
        imp.apply(fresh)
    imp.apply(fresh, check_weights=False)


def test_interrupted_imp_resumes_to_the_same_masks_and_metrics(tmp_path):
    def run(output_dir, fail_at=None):
        model = tiny_bert()
        evaluator = toy_evaluator(model, steps=4)
        train, calls = evaluator.training_func, []
        def flaky(*args, **kwargs):
            calls.append(1)
            if fail_at is not None and len(calls) == fail_at:
                raise KeyboardInterrupt("killed")
            train(*args, **kwargs)
        evaluator.training_func = flaky
        pruner = IMPPruner(model, bert_config_list(model, 0.4), evaluator, step=0.1, output_dir=str(output_dir))
        pruner.compress()
        return pruner, len(calls)
    straight, _ = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", fail_at=3)
    assert len(json.load(open(tmp_path / "b" / "trajectory.json"))) == 2
    resumed, calls = run(tmp_path / "b")
    assert calls == 3  # rounds 2, 3, 4 only
    assert [r["metric"] for r in resumed.trajectory] == [r["metric"] for r in straight.trajectory]
    for a, b in zip(straight.tickets, resumed.tickets):
        assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    _, calls = run(tmp_path / "b")
    assert calls == 0  # a finished run does nothing
    assert sorted(os.listdir(tmp_path / "b"))[:2] == ["imp_state.safetensors", "ticket-round00.safetensors"]
    model = tiny_bert()
    other = IMPPruner(model, bert_config_list(model, 0.4), toy_evaluator(model), step=0.2, output_dir=str(tmp_path / "b"))
    with pytest.raises(ValueError, match="other settings"):
        other.compress()


def test_reinitialize_really_redraws_a_loaded_pretrained_body(minilm_path):
    """transformers skips its own _init_weights on loaded modules; θ0′ must not silently stay θ0."""
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    before = {k: v.detach().clone() for k, v in model.base_model.named_parameters()}
    reinitialize(model, seed=0)
    after = dict(model.base_model.named_parameters())
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == ["pooler.dense.bias"]  # zero before and after
    q = after["encoder.layer.0.attention.self.query.weight"]
    assert abs(float(q.detach().std()) - model.config.initializer_range) < 0.002


def test_theta_i_ticket_carries_and_restores_its_rewind_weights(tmp_path):
    model = tiny_bert()
    pruner = IMPPruner(model, bert_config_list(model, 0.2), toy_evaluator(model, steps=4), step=0.1, rewind=2,
                       output_dir=str(tmp_path))
    pruner.compress()
    final = pruner.tickets[-1]
    assert final.rewind == "theta_i:2" and "embeddings.word_embeddings.weight" in final.weights
    assert Ticket.load(tmp_path / "ticket-round00.safetensors").weights is None  # only the final file has them
    loaded = Ticket.load(tmp_path / "ticket-round02.safetensors")
    fresh = tiny_bert()
    loaded.apply(fresh)  # the fingerprint is θ0's; then θ2 is loaded and masked
    body = dict(fresh.bert.named_parameters())
    for key, value in final.weights.items():
        expected = value * final.masks[key] if key in final.masks else value
        assert torch.equal(body[key], expected), key
