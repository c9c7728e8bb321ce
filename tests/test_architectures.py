"""Every supported architecture, as a tiny model built from its config: a complete prunable set (per role and
layer), masks equal to torch's, exact rewinding, zeros that stay zero, tickets, transfer, torch interop, and
clear refusals (unknown types, layouts that do not match, sets named by hand)."""
import copy
from collections import Counter, defaultdict

import pytest
import torch
from transformers import DebertaConfig, DebertaForSequenceClassification

from conftest import torch_global_masks as _torch_global_masks, toy_evaluator, watch_imp_rounds
from tiny_models import EXPECTED, KINDS, batch, stored_layers, tiny_model
from nni_bert_tickets import (IMPPruner, RandomPruner, Ticket, TicketError, bert_config_list, global_magnitude_masks,
                              install_torch_prune, masks_from_torch_prune, prunable_modules, prunable_weights,
                              remove_torch_prune)
from nni_bert_tickets.core.architectures import (LAYOUTS, ArchitectureError, Layout, prunable_matrices,
                                            register_architecture, structured_layers)
from nni_bert_tickets.core.masks import count_to_prune
from nni_bert_tickets.core.targets import is_pooler


def _body(model):
    prefix = model.base_model_prefix + "."
    return prefix, {n[len(prefix):] for n, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and n.startswith(prefix)}


@pytest.mark.parametrize("kind", KINDS)
def test_selected_set_is_complete_per_role_and_layer(kind):
    model, expected = tiny_model(kind), EXPECTED[kind]
    prefix, body = _body(model)
    selected = prunable_modules(model)
    assert all(n.startswith(prefix) for n in selected)  # never a task head
    assert body - {n[len(prefix):] for n in selected} == expected["dense"]  # the rest of the body: by design only
    roles, counts, hidden, ffn = defaultdict(Counter), Counter(), model.config.hidden_size, _ffn(model.config)
    for name, matrix in prunable_matrices(model).items():
        out_features, in_features = selected[name].weight.shape
        if matrix.pooler:
            assert (out_features, in_features) == (hidden, hidden)
            continue
        roles[matrix.layer].update(matrix.roles)
        counts[matrix.layer] += 1
        # a matrix's rows are its roles' rows: a fused Wqkv is 3 x hidden, a gated Wi 2 x ffn
        assert out_features == sum(ffn if r in ("ffn_in", "ffn_gate") else hidden for r in matrix.roles), name
        assert in_features == (ffn if matrix.roles == ("ffn_out",) else hidden), name
    assert sorted(roles) == list(range(stored_layers(kind, model.config)))
    assert all(r == expected["roles"] for r in roles.values()), dict(roles)
    assert set(counts.values()) == {expected["matrices"]}
    assert any(is_pooler(n) for n in selected) == expected["pooler"]
    mlm = tiny_model(kind, "mlm")  # same encoder matrices under an MLM head, and no pooler
    assert list(prunable_weights(mlm)) == [k for k in prunable_weights(model) if not is_pooler(k)]


def _ffn(config):
    return getattr(config, "intermediate_size", None) or config.hidden_dim


@pytest.mark.parametrize("kind", KINDS)
def test_global_masks_equal_torch_global_unstructured(kind):
    model = tiny_model(kind)
    modules, weights = list(prunable_modules(model).values()), prunable_weights(model)
    total = sum(w.numel() for w in weights.values())
    ours = global_magnitude_masks(weights, 0.5)
    ref = _torch_global_masks(modules, count_to_prune(total, 0.5))
    assert all(torch.equal(a, b) for a, b in zip(ours.values(), ref))
    ours2 = global_magnitude_masks(weights, 0.8, ours)  # the next IMP level, on top of the first mask
    ref2 = _torch_global_masks(modules, count_to_prune(total, 0.8) - count_to_prune(total, 0.5), ref)
    assert all(torch.equal(a, b) for a, b in zip(ours2.values(), ref2))
    (entry,) = bert_config_list(model, 0.5)
    assert entry["op_names"] == list(prunable_modules(model))


@pytest.mark.parametrize("kind", KINDS)
def test_imp_rewinds_exactly_and_pruned_weights_stay_zero(kind):
    model = tiny_model(kind)
    theta0 = {k: v.detach().clone() for k, v in prunable_weights(model).items()}
    evaluator = toy_evaluator(model, steps=3)
    starts, violations = watch_imp_rounds(model, evaluator, lambda m: copy.deepcopy(prunable_weights_unwrapped(m)))
    pruner = IMPPruner(model, bert_config_list(model, 0.4), evaluator, step=0.2)
    pruner.compress()
    assert len(starts) == 3 and len(violations) == 3 * 3 * len(theta0) and not any(violations)
    for level in (1, 2):
        mask = pruner.tickets[level].masks
        assert mask.keys() == theta0.keys()
        for key, w0 in theta0.items():  # survivors back at θ0 bitwise, pruned exactly 0
            assert torch.equal(starts[level][key], torch.where(mask[key], w0, torch.zeros(()))), key
    pruner.unwrap_model()
    assert pruner.tickets[-1].sparsity == pytest.approx(0.4, abs=1 / sum(w.numel() for w in theta0.values()))
    assert pruner.tickets[-1].model_type == model.config.model_type


def prunable_weights_unwrapped(model):
    """The prunable weights of an NNI-wrapped model, by ticket key."""
    out = {}
    for key, name in zip(prunable_weights(model), prunable_modules(model)):
        module = dict(model.named_modules())[name]
        wrapper = getattr(module, "_nni_wrapper", None)
        out[key] = (wrapper.weight if wrapper is not None else module.weight).detach()
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_ticket_loads_on_a_fresh_model_of_its_type_and_is_refused_on_another(kind, tmp_path):
    model = tiny_model(kind)
    ticket = Ticket.from_model(model, global_magnitude_masks(prunable_weights(model), 0.6))
    ticket.save(tmp_path / "t.safetensors")
    loaded = Ticket.load(tmp_path / "t.safetensors")
    fresh = tiny_model(kind)  # same config and seed: the same θ0
    applied = loaded.apply(fresh)
    assert applied.masks.keys() == ticket.masks.keys()
    assert all(torch.equal(loaded.masks[k], ticket.masks[k]) for k in ticket.masks)
    optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.1, weight_decay=0.5)
    fresh.train()
    for _ in range(3):  # pruned weights stay exactly 0 through training steps
        fresh(input_ids=batch(), labels=torch.tensor([0, 1, 1, 0])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    live = prunable_weights(fresh)
    assert all(bool((live[k][~m] == 0).all()) and bool((live[k][m] != 0).any()) for k, m in ticket.masks.items())
    other = KINDS[(KINDS.index(kind) + 1) % len(KINDS)]
    other = other if tiny_model(other).config.model_type != model.config.model_type else "bert"
    with pytest.raises(TicketError, match=f"ticket is for a '{model.config.model_type}' model"):
        loaded.apply(tiny_model(other))
    with pytest.raises(TicketError, match="does not hold the weights"):
        loaded.apply(tiny_model(kind, seed=1))


@pytest.mark.parametrize("kind", KINDS)
def test_transfer_to_an_mlm_model_and_torch_interop(kind):
    model = tiny_model(kind)
    ticket = Ticket.from_model(model, global_magnitude_masks(prunable_weights(model), 0.5), task="sst2")
    mlm = tiny_model(kind, "mlm")
    mlm.base_model.load_state_dict(model.base_model.state_dict(), strict=False)  # the same θ0 body
    applied = ticket.transfer_to(mlm, task="mlm")
    assert set(applied.masks) == {k for k in ticket.masks if not is_pooler(k)}
    assert applied.ticket.task == "mlm" and applied.ticket.metrics["source_task"] == "sst2"
    live = prunable_weights(mlm)
    assert all(bool((live[k][~m] == 0).all()) for k, m in applied.masks.items())

    hooked, masked = tiny_model(kind), tiny_model(kind)
    install_torch_prune(hooked, ticket)
    ticket.apply(masked)
    assert masks_from_torch_prune(hooked).keys() == ticket.masks.keys()
    assert all(torch.equal(masks_from_torch_prune(hooked)[k], m) for k, m in ticket.masks.items())
    x = batch()
    assert torch.equal(hooked(input_ids=x).logits, masked(input_ids=x).logits)
    remove_torch_prune(hooked)
    assert all(torch.equal(a, b) for a, b in zip(prunable_weights(hooked).values(), prunable_weights(masked).values()))


def _deberta_v1():
    torch.manual_seed(0)
    return DebertaForSequenceClassification(DebertaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                                          num_attention_heads=2, intermediate_size=32))


def test_unknown_architecture_is_refused_with_its_linear_modules_and_how_to_name_them():
    model = _deberta_v1()
    for call in (lambda: prunable_modules(model), lambda: bert_config_list(model, 0.5),
                 lambda: Ticket.from_model(model, {})):
        with pytest.raises(ArchitectureError) as err:
            call()
        message = str(err.value)
        assert "'deberta'" in message and "not a known architecture" in message
        assert "'deberta.encoder.layer.{i}.attention.self.in_proj' 48x16 (x2)" in message
        assert "patterns=" in message and "names=" in message and "register_architecture" in message
    with pytest.raises(ArchitectureError, match="no prunable BERT matrices"):
        prunable_modules(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_a_set_named_by_hand_and_a_registered_architecture():
    model = _deberta_v1()
    patterns = [r"encoder\.layer\.\d+\.attention\.self\.in_proj$", r"encoder\.layer\.\d+\.(attention\.)?output\.dense$",
                r"encoder\.layer\.\d+\.intermediate\.dense$"]
    (entry,) = bert_config_list(model, 0.5, patterns=patterns)
    assert len(entry["op_names"]) == 8 and all(n.startswith("deberta.encoder.layer.") for n in entry["op_names"])
    names = ["deberta.encoder.layer.0.attention.self.in_proj", "deberta.encoder.layer.1.intermediate.dense"]
    assert list(prunable_modules(model, names=names)) == names
    with pytest.raises(ArchitectureError, match="matches no nn.Linear module"):
        prunable_modules(model, patterns=[r"attention\.self\.query$"])
    with pytest.raises(ArchitectureError, match="are not nn.Linear modules"):
        prunable_modules(model, names=["deberta.encoder.layer.0.attention.self"])
    with pytest.raises(ValueError, match="not a regular expression"):
        prunable_modules(model, patterns=["("])
    with pytest.raises(ValueError, match="lists of strings"):
        prunable_modules(model, patterns=r"in_proj")
    try:
        register_architecture("deberta", patterns=patterns)
        _, masks = RandomPruner(model, bert_config_list(model, 0.5), seed=0).compress()
        ticket = Ticket.from_nni_masks(model, masks)
        assert len(ticket.masks) == 8 and ticket.model_type == "deberta"
        assert ticket.sparsity == pytest.approx(0.5, abs=1e-3)
    finally:
        LAYOUTS.pop("deberta", None)
    try:  # or a full layout: roles, layers, and the structured check
        register_architecture("deberta", layout=Layout(
            ("deberta",), "DeBERTa v1", lambda c: [f"encoder.layer.{i}" for i in range(c.num_hidden_layers)],
            (("attention.self.in_proj", ("query", "key", "value")), ("attention.output.dense", ("attention_output",)),
             ("intermediate.dense", ("ffn_in",)), ("output.dense", ("ffn_out",))), dense=()))
        roles = Counter(r for m in prunable_matrices(model).values() for r in m.roles)
        assert roles == Counter(query=2, key=2, value=2, attention_output=2, ffn_in=2, ffn_out=2)
        with pytest.raises(ArchitectureError, match="fused projections"):
            structured_layers(model)
    finally:
        LAYOUTS.pop("deberta", None)
    # a known type's subset by hand keeps the layout's roles
    v3 = tiny_model("deberta-v3")
    subset = prunable_matrices(v3, patterns=[r"attention\.self"])
    assert {m.roles for m in subset.values()} == {("query",), ("key",), ("value",)}


def test_known_architecture_whose_matrices_do_not_match_is_refused():
    model = tiny_model("deberta-v3")
    model.deberta.encoder.layer[1].attention.self.key_proj = torch.nn.Identity()
    with pytest.raises(ArchitectureError, match=r"1 of the 12 matrices its DeBERTa-v2 / v3 layout expects.*key_proj"):
        bert_config_list(model, 0.5)
    model = tiny_model("deberta-v3")
    model.deberta.encoder.layer[0].attention.self.extra_proj = torch.nn.Linear(16, 16)
    with pytest.raises(ArchitectureError, match=r"not place: 'deberta.encoder.layer.{i}.attention.self.extra_proj'"):
        prunable_modules(model)
    with pytest.raises(ValueError, match="has no pooler"):
        prunable_modules(tiny_model("roberta"), pooler=True)
    assert len(prunable_modules(tiny_model("albert"), pooler=False)) == 6


def test_a_saved_structured_ticket_model_keeps_berts_unstructured_layout():
    from nni_bert_tickets.core.hf_remote.modeling_pruned_bert import PrunedBertConfig, PrunedBertForSequenceClassification
    config = PrunedBertConfig(heads_per_layer=[1, 2], intermediate_sizes=[8, 32], vocab_size=64, hidden_size=16,
                              num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    model = PrunedBertForSequenceClassification(config)
    assert [m.weight.shape[0] for m in prunable_modules(model).values()] == [8, 8, 8, 16, 8, 16] + [16] * 4 + [32, 16, 16]
    ticket = Ticket.from_model(model, global_magnitude_masks(prunable_weights(model), 0.5))
    with pytest.raises(TicketError, match="ticket is for a 'pruned_bert' model"):
        ticket.apply(tiny_model("bert"))
    with pytest.raises(ArchitectureError, match="structured tickets .* support the model types"):
        structured_layers(model)
