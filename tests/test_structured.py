"""Structured tickets: physical removal equals masking, rounds and rewinding, a model that loads alone."""
import copy

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from nni_bert_tickets.core.structured import StructuredIMP, StructuredTicket, save_structured, structured_ticket_model


@pytest.fixture
def minilm(minilm_path):
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2).eval()


def _inputs():
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(1000, 5000, (3, 12), generator=g),
            "attention_mask": torch.ones(3, 12, dtype=torch.long)}


def test_removed_heads_and_channels_equal_masking_them(minilm):
    heads = [[0, 3, 5], list(range(12)), [1], [2, 4, 6, 8], list(range(6)), [11]]
    channels = [list(range(0, 1536, 2)), list(range(1536)), list(range(100)), [5, 9], list(range(700)), [0]]
    ticket = StructuredTicket(heads=heads, channels=channels, head_size=32)
    small = structured_ticket_model(minilm, ticket, _inputs())
    reference = copy.deepcopy(minilm)
    with torch.no_grad():  # independent reference: a removed head / channel contributes nothing downstream
        for layer, keep_h, keep_c in zip(reference.bert.encoder.layer, heads, channels):
            for h in set(range(12)) - set(keep_h):
                layer.attention.output.dense.weight[:, h * 32:(h + 1) * 32] = 0
            layer.output.dense.weight[:, sorted(set(range(1536)) - set(keep_c))] = 0
    assert torch.allclose(small(**_inputs()).logits, reference(**_inputs()).logits, atol=1e-5)
    shapes = [(l.attention.self.query.out_features, l.intermediate.dense.out_features) for l in small.bert.encoder.layer]
    assert shapes == [(32 * len(h), len(c)) for h, c in zip(heads, channels)]
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in minilm.parameters())


def test_structured_imp_rounds_rewind_and_saved_model_loads_with_transformers_alone(minilm, tmp_path):
    seen = []

    def fit(model):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        with torch.no_grad():  # "training": perturb every weight so rewinding is observable
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        return {"default": float(len(seen))}
    imp = StructuredIMP(minilm, fit, _inputs(), head_sparsity=0.5, channel_sparsity=0.25, step=0.25)
    small = imp.run()
    assert [r["round"] for r in imp.trajectory] == [0, 1, 2]
    assert imp.ticket.head_sparsity == 0.5 and imp.ticket.channel_sparsity == pytest.approx(0.25, abs=1e-3)
    assert all(len(h) >= 1 for h in imp.ticket.heads)
    # round 2 starts from θ0 restricted to the survivors (bitwise), with the head trained so far
    start = seen[2]
    expected = structured_ticket_model(minilm, imp.ticket, _inputs()).state_dict()
    assert torch.equal(start["bert.embeddings.word_embeddings.weight"], expected["bert.embeddings.word_embeddings.weight"])
    assert torch.equal(start["bert.encoder.layer.0.attention.self.query.weight"],
                       expected["bert.encoder.layer.0.attention.self.query.weight"])
    assert not torch.equal(start["classifier.weight"], minilm.state_dict()["classifier.weight"])
    save_structured(small, imp.ticket, str(tmp_path))
    loaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path), trust_remote_code=True).eval()
    assert type(loaded).__name__ == "PrunedBertForSequenceClassification"
    assert torch.allclose(loaded(**_inputs()).logits, small.eval()(**_inputs()).logits, atol=1e-6)


def _tiny_inputs():
    return {"input_ids": torch.randint(1, 64, (2, 8), generator=torch.Generator().manual_seed(0))}


def _never_fit(model):
    raise AssertionError("trained despite a refused setting")


@pytest.mark.parametrize("bad, match", [
    ({"head_sparsity": 0.75}, r"head_sparsity 0.75 cannot be reached: .* 2 layers keeps at least 1 .* at most 2 of "
                              r"the 4 can go"),
    ({"head_sparsity": 0.9, "min_heads": 1}, "head_sparsity 0.9 cannot be reached"),
    ({"head_sparsity": 0.25, "min_heads": 2}, r"head_sparsity 0.25 cannot be reached: .* at least 2 .* at most 0"),
    ({"channel_sparsity": 0.99}, r"channel_sparsity 0.99 cannot be reached: .* at most 62 of the 64 can go"),
    ({"step": 0}, r"step must be a fraction in \(0, 1\]"),
    ({"step": -0.1}, r"step must be a fraction in \(0, 1\]"),
    ({"step": 1.5}, r"step must be a fraction in \(0, 1\]"),
    ({"step": True}, r"step must be a fraction in \(0, 1\]"),
    ({"min_heads": 0}, r"min_heads must be a whole number of heads per layer in \[1, 2\]"),
    ({"min_heads": 3}, r"min_heads must be a whole number of heads per layer in \[1, 2\]"),
    ({"head_sparsity": 1.0}, r"head_sparsity must be a number in \[0, 1\)"),
])
def test_unreachable_targets_and_bad_steps_are_refused_before_training(bad, match):
    from conftest import tiny_bert
    settings = {"head_sparsity": 0.5, "channel_sparsity": 0.5, "step": 0.25, **bad}
    with pytest.raises(ValueError, match=match):  # (a tiny model: 2 layers x 2 heads, 2 x 32 channels)
        StructuredIMP(tiny_bert(), _never_fit, _tiny_inputs(), **settings).run()


@pytest.mark.parametrize("head_sparsity, step, rounds, heads_left", [
    (0.5, 0.25, 2, [1, 1]),    # the most that can go: one head per layer left
    (0.3, 0.25, 2, None),      # 0.3 of 4 heads rounds to 1 (0.25 < 0.3): once looped for ever
    (0.5, 1.0, 1, [1, 1]),     # everything in one round
])
def test_structured_imp_ends_after_its_rounds_at_the_nearest_whole_count(head_sparsity, step, rounds, heads_left):
    from conftest import tiny_bert
    calls = []

    def fit(model):
        calls.append(sum(p.numel() for p in model.parameters()))
        assert len(calls) <= rounds + 1, "structured IMP did not stop"
        return {"default": 0.0}
    imp = StructuredIMP(tiny_bert(), fit, _tiny_inputs(), head_sparsity=head_sparsity, channel_sparsity=0.25,
                        step=step)
    imp.run()
    assert [r["round"] for r in imp.trajectory] == list(range(rounds + 1))
    assert imp.ticket.head_sparsity == round(head_sparsity * 4) / 4
    assert sum(map(len, imp.ticket.channels)) == 64 - 16 and all(len(h) >= 1 for h in imp.ticket.heads)
    assert heads_left is None or [len(h) for h in imp.ticket.heads] == heads_left
    assert calls == sorted(calls, reverse=True) and calls[-1] < calls[0]  # smaller every round


def _heads_removed_with(importance, gradients=None):
    from conftest import tiny_bert
    model = tiny_bert()
    layer = model.bert.encoder.layer[1].attention
    with torch.no_grad():  # layer 1, head 1 (columns 8..15 of the output, rows 8..15 of q/k/v): the largest weights
        for m in (layer.self.query, layer.self.key, layer.self.value):
            m.weight[8:16] *= 10
        layer.output.dense.weight[:, 8:16] *= 10
    imp = StructuredIMP(model, lambda m: {"default": 0.0}, _tiny_inputs(), head_sparsity=0.25, channel_sparsity=0.25,
                        step=1.0, importance=importance, gradients=gradients)
    imp.run()
    return [(i, h) for i, kept in enumerate(imp.ticket.heads) for h in range(2) if h not in kept]


def test_taylor_importance_ranks_by_weight_times_gradient_not_magnitude():
    def gradients(model):  # every weight's gradient 1, except layer 1 head 1's: zero, so its Taylor score is 0
        loss = sum(p.sum() for p in model.parameters())
        loss.backward()
        attention = model.bert.encoder.layer[1].attention
        for m in (attention.self.query, attention.self.key, attention.self.value):
            m.weight.grad[8:16] = 0
        attention.output.dense.weight.grad[:, 8:16] = 0
    assert (1, 1) not in _heads_removed_with("magnitude")  # the largest head survives magnitude ranking
    assert _heads_removed_with("taylor", gradients) == [(1, 1)]  # and is the one Taylor removes


@pytest.mark.parametrize("importance, gradients, match", [
    ("taylor", None, "importance='taylor' needs gradients="),
    ("l1", None, r"importance must be one of \('magnitude', 'taylor'\), got 'l1'"),
])
def test_bad_importance_is_refused_before_training(importance, gradients, match):
    from conftest import tiny_bert
    with pytest.raises(ValueError, match=match):
        StructuredIMP(tiny_bert(), _never_fit, _tiny_inputs(), importance=importance, gradients=gradients).run()


def _channels_left_with(scope):
    from conftest import tiny_bert
    model = tiny_bert()
    with torch.no_grad():  # every FFN weight of layer 0 ten times layer 1's: a global ranking takes only layer 1's
        model.bert.encoder.layer[0].intermediate.dense.weight.mul_(10)
        model.bert.encoder.layer[0].output.dense.weight.mul_(10)
    imp = StructuredIMP(model, lambda m: {"default": 0.0}, _tiny_inputs(), head_sparsity=0.0, channel_sparsity=0.25,
                        step=0.25, scope=scope)
    imp.run()
    assert imp.ticket.metrics["scope"] == scope
    return [len(c) for c in imp.ticket.channels]


def test_layer_scope_removes_the_same_fraction_of_every_layer_where_global_ranking_does_not():
    assert _channels_left_with("global") == [32, 16]  # all 16 removed channels from the small layer
    assert _channels_left_with("layer") == [24, 24]   # 8 of 32 from each


@pytest.mark.parametrize("bad, match", [
    ({"scope": "local"}, r"scope must be one of \('global', 'layer'\), got 'local'"),
    ({"scope": "layer", "channel_sparsity": 0.99}, r"channel_sparsity 0.99 cannot be reached with scope='layer': "
                                                   r"layer 0 keeps at least 1 of its 32 FFN channels"),
])
def test_bad_scope_is_refused_before_training(bad, match):
    from conftest import tiny_bert
    with pytest.raises(ValueError, match=match):
        StructuredIMP(tiny_bert(), _never_fit, _tiny_inputs(), **{"channel_sparsity": 0.5, **bad}).run()
