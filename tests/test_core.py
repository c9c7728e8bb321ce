"""Core behaviour: targets, global masks against torch's own, schedules, zero-keeping, rewinding, errors."""

import pytest
import torch
from transformers import (AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification,
                          DistilBertConfig, DistilBertForSequenceClassification, RobertaConfig,
                          RobertaForSequenceClassification)

from conftest import tiny_bert, torch_global_masks as _torch_global_masks, toy_evaluator, watch_imp_rounds
from nni_bert_tickets import (IMPPruner, RandomPruner, Ticket, bert_config_list, global_magnitude_masks,
                              prunable_modules, prunable_weights, random_masks, sparsity_schedule)
from nni_bert_tickets.core.baselines import one_shot_magnitude_ticket
from nni_bert_tickets.core.masks import count_to_prune, sparsity
from nni_bert_tickets.core.targets import ticket_key


def test_bert_base_layout_has_73_prunable_matrices_and_no_heads():
    config = BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=12, num_attention_heads=2,
                        intermediate_size=16, num_labels=3)
    model = BertForSequenceClassification(config)
    names = list(prunable_modules(model))
    assert len(names) == 73
    assert "bert.pooler.dense" in names
    assert not any("embeddings" in n or "classifier" in n or "LayerNorm" in n for n in names)
    (config_entry,) = bert_config_list(model, 0.7)
    assert config_entry["target_names"] == ["weight"]
    assert config_entry["target_settings"]["weight"]["sparse_ratio"] == 0.7
    assert config_entry["target_settings"]["weight"]["global_group_id"] is not None


def test_other_bert_family_namings_are_recognised():
    roberta = RobertaForSequenceClassification(RobertaConfig(vocab_size=40, hidden_size=8, num_hidden_layers=2,
                                                             num_attention_heads=2, intermediate_size=16))
    distil = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=40, dim=8, n_layers=2, n_heads=2,
                                                                  hidden_dim=16))
    assert len(prunable_modules(roberta)) == 12  # RoBERTa's head has its own dense: not selected
    assert not any(n.startswith("classifier") for n in prunable_modules(roberta))
    assert len(prunable_modules(distil)) == 12
    assert "pre_classifier" not in prunable_modules(distil)


def test_embedded_minilm_has_37_matrices(minilm_path):
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    assert len(prunable_modules(model)) == 6 * 6 + 1


def _assert_same_up_to_ties(ours, ref, weights, prior=None):
    """Equal masks, except where weights of exactly the threshold magnitude (or, in a second step, zero weights
    and already-pruned ones, which torch scores alike) are swapped: which of equal weights goes is arbitrary.
    The embedded fp32 weights have no such ties, so there the masks are equal; a copy rounded to fp16 has some."""
    assert sum(int((~a).sum()) for a in ours.values()) == sum(int((~b).sum()) for b in ref)
    fresh = [(~a if prior is None else ~a & p) for a, p in zip(ours.values(), (prior or ours).values())]
    threshold = max(float(w.detach().abs()[f].max()) for w, f in zip(weights.values(), fresh) if f.any())
    for w, a, b in zip(weights.values(), ours.values(), ref):
        swapped = w.detach().abs()[a != b]
        assert bool(((swapped == threshold) | ((swapped == 0) & (prior is not None))).all())


def test_global_magnitude_mask_equals_torch_global_unstructured(minilm_path):
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    modules = list(prunable_modules(model).values())
    weights = prunable_weights(model)
    ours = global_magnitude_masks(weights, 0.4)
    ref = _torch_global_masks(modules, count_to_prune(sum(w.numel() for w in weights.values()), 0.4))
    _assert_same_up_to_ties(ours, ref, weights)
    # a second IMP-style step on top of the first mask, as torch does iteratively
    total = sum(w.numel() for w in weights.values())
    ours2 = global_magnitude_masks(weights, 0.7, ours)
    ref2 = _torch_global_masks(modules, count_to_prune(total, 0.7) - count_to_prune(total, 0.4), ref)
    _assert_same_up_to_ties(ours2, ref2, weights, ours)
    assert all(bool((b <= a).all()) for a, b in zip(ours.values(), ours2.values()))  # nested


@pytest.mark.parametrize("sparsity, one_apart", [(0.2, False), (0.3, True), (0.7, False)])
def test_one_shot_ticket_is_nni_level_pruner_with_bert_config_list_up_to_rounding(sparsity, one_apart):
    """NNI's LevelPruner ranks the same global group by |w| but prunes floor(s·N) weights where we (and
    torch.nn.utils.prune) prune round(s·N): the masks are equal when those agree, else NNI keeps one more."""
    from nni.compression.pruning import LevelPruner
    model = tiny_bert()  # 4,352 prunable weights: s·N = 870.4, 1305.6, 3046.4
    ours = one_shot_magnitude_ticket(model, sparsity).masks
    total = sum(m.numel() for m in ours.values())
    pruner = LevelPruner(model, bert_config_list(model, sparsity))
    _, masks = pruner.compress()
    pruner.unwrap_model()
    theirs = {ticket_key(model, name): m["weight"].bool() for name, m in masks.items()}
    assert theirs.keys() == ours.keys()
    assert sum(int((~m).sum()) for m in ours.values()) == count_to_prune(total, sparsity)
    assert sum(int((~m).sum()) for m in theirs.values()) == int(total * sparsity)
    assert all(bool((theirs[k] >= ours[k]).all()) for k in ours)  # NNI's pruned weights are ours, nested
    differ = sum(int((theirs[k] != ours[k]).sum()) for k in ours)
    assert differ == count_to_prune(total, sparsity) - int(total * sparsity)
    assert differ == int(one_apart)


@pytest.mark.parametrize("kind", ["linear", "geometric"])
def test_schedules_reach_documented_sparsity_each_round(kind):
    levels = sparsity_schedule(0.5, kind, 0.2)
    assert levels[-1] == 0.5
    expected = [0.2, 0.4, 0.5] if kind == "linear" else [0.2, 0.36, 0.488, 0.5]
    assert levels == pytest.approx(expected)
    model = tiny_bert()
    pruner = IMPPruner(model, bert_config_list(model, 0.5), toy_evaluator(model, steps=2), schedule=kind, step=0.2)
    pruner.compress()
    total = sum(m.numel() for m in pruner.tickets[0].masks.values())
    assert [r["target_sparsity"] for r in pruner.trajectory] == [0.0] + levels
    for record, ticket in zip(pruner.trajectory, pruner.tickets):
        assert abs(ticket.sparsity - record["target_sparsity"]) * total <= 1.0  # within one weight


@pytest.mark.parametrize("make", [
    lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.5),
    lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9, nesterov=True, weight_decay=0.5),
    lambda p: torch.optim.Adam(p, lr=0.1, weight_decay=0.5),  # L2 decay: grad + wd * w, w = 0
], ids=["AdamW", "SGD", "Adam"])
def test_applied_ticket_keeps_pruned_weights_exactly_zero_under_adamw_sgd_and_adam(make):
    model = tiny_bert()
    ticket = Ticket.from_model(model, global_magnitude_masks(prunable_weights(model), 0.6))
    applied = ticket.apply(model)
    optimizer = make(model.parameters())
    x = torch.randint(1, 64, (4, 10))
    for _ in range(5):
        model(input_ids=x, labels=torch.tensor([0, 1, 1, 0])).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    live = prunable_weights(model)
    for key, mask in ticket.masks.items():
        assert bool((live[key][~mask] == 0).all())
        assert bool((live[key][mask] != 0).any())  # survivors did train
    applied.remove()


def test_imp_rewinds_survivors_bitwise_to_theta0_and_keeps_pruned_zero():
    model = tiny_bert()
    theta0 = {k: v.detach().clone() for k, v in prunable_weights(model).items()}
    evaluator = toy_evaluator(model, steps=4)
    starts, violations = watch_imp_rounds(model, evaluator)
    pruner = IMPPruner(model, bert_config_list(model, 0.4), evaluator, step=0.2)
    pruner.compress()
    for level in (1, 2):
        mask = pruner.tickets[level].masks
        for key, w0 in theta0.items():
            got = starts[level]["bert." + key]
            assert torch.equal(got, torch.where(mask[key], w0, torch.zeros(()))), key
    assert len(violations) == 3 * 4 * 13 and not any(violations)  # rounds x steps x matrices
    pruner.unwrap_model()
    live = prunable_weights(model)
    for key, m in pruner.tickets[-1].masks.items():
        assert bool((live[key][~m] == 0).all())


def test_rewind_to_theta_i_and_head_policies():
    results = {}
    for head in ("keep", "rewind", "reinit"):
        model = tiny_bert()
        starts, ends = [], []
        evaluator = toy_evaluator(model, steps=5)
        train = evaluator.training_func

        def recording(model, optimizer, *args, **kwargs):
            starts.append({n.replace("._nni_wrapper", ""): p.detach().clone() for n, p in model.named_parameters()})
            if not ends:  # first round: record the weights after step 2
                optimizer.register_step_post_hook(lambda *a: ends.append(
                    {n.replace("._nni_wrapper", ""): p.detach().clone() for n, p in model.named_parameters()}))
            train(model, optimizer, *args, **kwargs)
            if len(starts) == 1:
                ends.append({n.replace("._nni_wrapper", ""): p.detach().clone() for n, p in model.named_parameters()})
        evaluator.training_func = recording
        pruner = IMPPruner(model, bert_config_list(model, 0.2), evaluator, step=0.2, rewind=2, head=head)
        pruner.compress()
        theta2, trained = ends[1], ends[-1]
        mask = pruner.tickets[1].masks
        q = "bert.encoder.layer.0.attention.self.query.weight"
        key = q[len("bert."):]
        assert torch.equal(starts[1][q], torch.where(mask[key], theta2[q], torch.zeros(())))
        assert torch.equal(starts[1]["bert.embeddings.word_embeddings.weight"],
                           theta2["bert.embeddings.word_embeddings.weight"])
        assert pruner.tickets[1].weights is not None and pruner.tickets[1].rewind == "theta_i:2"
        results[head] = (starts[1]["classifier.weight"], theta2["classifier.weight"], trained["classifier.weight"])
    assert torch.equal(results["keep"][0], results["keep"][2])
    assert torch.equal(results["rewind"][0], results["rewind"][1])
    assert not torch.equal(results["reinit"][0], results["reinit"][1])
    assert not torch.equal(results["reinit"][0], results["reinit"][2])


def test_standard_pruning_keeps_trained_weights():
    model = tiny_bert()
    theta0 = {k: v.detach().clone() for k, v in prunable_weights(model).items()}
    pruner = IMPPruner(model, bert_config_list(model, 0.2), toy_evaluator(model), step=0.2, rewind=None)
    pruner.compress()
    pruner.unwrap_model()
    key = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(prunable_weights(model)[key], theta0[key])
    assert pruner.tickets[-1].algorithm == "standard"


def test_same_seed_same_masks_and_different_seed_differs():
    def run(seed, cls=IMPPruner):
        model = tiny_bert()
        if cls is RandomPruner:
            return RandomPruner(model, bert_config_list(model, 0.5), seed=seed).compress()[1]
        pruner = IMPPruner(model, bert_config_list(model, 0.4), toy_evaluator(model), step=0.2, seed=seed)
        return pruner.compress()[1]
    for cls in (IMPPruner, RandomPruner):
        a, b, c = run(0, cls), run(0, cls), run(7, cls)
        assert all(torch.equal(a[k]["weight"], b[k]["weight"]) for k in a)
        assert any(not torch.equal(a[k]["weight"], c[k]["weight"]) for k in a)


def test_random_pruner_is_global_and_exact():
    model = tiny_bert()
    _, masks = RandomPruner(model, bert_config_list(model, 0.5), seed=3).compress()
    flat = {k: v["weight"].bool() for k, v in masks.items()}
    total = sum(m.numel() for m in flat.values())
    assert sum(int((~m).sum()) for m in flat.values()) == count_to_prune(total, 0.5)
    per_layer = [1 - float(m.float().mean()) for m in flat.values()]
    assert max(per_layer) != min(per_layer)  # global, not per-layer
    assert sparsity(random_masks(prunable_weights(model), 0.3, seed=1)) == pytest.approx(0.3, abs=1 / total)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "0.5", True])
def test_bad_sparsity_is_a_clear_error(bad):
    model = tiny_bert()
    with pytest.raises(ValueError, match="sparse_ratio must be a number in \\[0, 1\\)"):
        bert_config_list(model, bad)
    with pytest.raises(ValueError, match="\\[0, 1\\)"):
        global_magnitude_masks(prunable_weights(model), 1.0 if bad is True else bad)


def test_config_matching_no_module_is_a_clear_error(tmp_path):
    model = tiny_bert()
    config = [{"op_names": ["bert.encoder.layer.9.attention.self.query"], "target_names": ["weight"],
               "sparse_ratio": 0.5}]
    with pytest.raises(ValueError, match="does not have"):
        IMPPruner(model, config, toy_evaluator(model), output_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="no prunable BERT matrices"):
        bert_config_list(torch.nn.Sequential(torch.nn.Linear(2, 2)), 0.5)


def test_config_with_pattern_matching_nothing_is_a_clear_error():
    model = tiny_bert()
    with pytest.raises(ValueError, match="matches no module"):
        RandomPruner(model, [{"op_names_re": ["nothing\\..*"], "target_names": ["weight"], "sparse_ratio": 0.5}])
    with pytest.raises(ValueError, match="\\[0, 1\\)"):
        RandomPruner(model, [{"op_types": ["Linear"], "target_names": ["weight"], "sparse_ratio": 1.2}])


def test_bad_schedule_or_step_is_refused_and_leaves_the_model_unwrapped():
    model = tiny_bert()
    with pytest.raises(ValueError, match="schedule"):
        IMPPruner(model, bert_config_list(model, 0.5), toy_evaluator(model), schedule="cubic")
    with pytest.raises(ValueError, match="step"):
        IMPPruner(model, bert_config_list(model, 0.5), toy_evaluator(model), step=1.5)
    names = list(prunable_modules(model))
    with pytest.raises(ValueError, match="sparse_ratio"):
        IMPPruner(model, [{"op_names": names, "target_names": ["weight"]}], toy_evaluator(model))
    assert not any("_nni_wrapper" in n for n, _ in model.named_modules())
    pruner = IMPPruner(model, bert_config_list(model, 0.5), toy_evaluator(model))  # still wrappable
    pruner.unwrap_model()


def test_imp_with_a_plain_nni_evaluator_hides_only_the_step_patch_warning():
    """With a plain TorchEvaluator, NNI's patch of optimizer.step after the scheduler is built would make torch
    warn every round; exactly that message is filtered while IMP trains, others still show."""
    import warnings
    model = tiny_bert()
    evaluator = toy_evaluator(model, steps=2)
    train = evaluator.training_func

    def warning_too(*args, **kwargs):
        warnings.warn("a warning of the user's own loop", UserWarning)
        train(*args, **kwargs)
    evaluator.training_func = warning_too
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        IMPPruner(model, bert_config_list(model, 0.2), evaluator, step=0.1).compress()
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "overridden after learning rate scheduler" in m]
    assert messages.count("a warning of the user's own loop") == 3  # one per round: other warnings still show
