"""Every baseline a pruner class: θ0′ / θ0″ as NNI pruners, the torch pruning methods and IMP for plain torch,
each checked against the package's functions and IMPPruner."""

import pytest
import torch
from torch.nn.utils import prune

from conftest import tiny_bert, toy_batches, toy_evaluator
from nni_bert_tickets import (GlobalMagnitude, IMPPruner, RandomGlobal, RandomPruner, ReinitPruner, ShuffledPruner,
                              Ticket, TicketError, TicketMask, bert_config_list, global_magnitude_masks,
                              global_magnitude_step, install_torch_prune, mask_config_list, masks_from_torch_prune,
                              one_shot_magnitude_ticket, prunable_modules, prunable_weights, random_masks,
                              reinitialize, remove_torch_prune, shuffle_weights, torch_imp, torch_parameters)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a, b):
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def _ticket(sparsity=0.5):
    return one_shot_magnitude_ticket(tiny_bert(), sparsity)


# ---- θ0′ and θ0″ as NNI pruners --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["reinit", "layers", "within"])
def test_weight_baseline_pruners_give_exactly_what_the_functions_give(kind):
    ticket = _ticket()
    reference = tiny_bert()
    if kind == "reinit":
        reinitialize(reference, seed=4)
    else:
        shuffle_weights(reference, seed=4, mode=kind)
    ticket.apply(reference, check_weights=False, load_weights=False)

    model = tiny_bert()
    if kind == "reinit":
        pruner = ReinitPruner(model, mask_config_list(model, ticket), mask=ticket, seed=4)
    else:
        pruner = ShuffledPruner(model, mask_config_list(model, ticket), mask=ticket, seed=4, mode=kind)
    out, masks = pruner.compress()
    assert out is model and len(masks) == len(ticket.masks)
    assert all(torch.equal(masks[name]["weight"].bool(), ticket.masks[key])
               for name, key in [(n, n[len("bert."):] + ".weight") for n in masks])
    assert pruner.ticket().masks.keys() == ticket.masks.keys()
    assert pruner.ticket().algorithm == ("random_reinit" if kind == "reinit" else "shuffled")
    pruner.compress()  # the weights are drawn once
    pruner.unwrap_model()
    assert _same_state(_state(model), _state(reference)) == []
    assert _same_state(_state(model), _state(tiny_bert()))  # and the weights did change


def test_weight_baseline_pruners_take_another_pruners_masks_and_a_sparse_ratio():
    donor = tiny_bert()
    _, random_masks_nni = RandomPruner(donor, bert_config_list(donor, 0.6), seed=2).compress()
    reference = tiny_bert()
    reinitialize(reference, seed=1)
    Ticket.from_nni_masks(donor, random_masks_nni).apply(reference, check_weights=False)

    model = tiny_bert()
    pruner = ReinitPruner(model, bert_config_list(model, 0.6), mask=random_masks_nni, seed=1)  # its sparse_ratio fits
    pruner.compress()
    pruner.unwrap_model()
    assert _same_state(_state(model), _state(reference)) == []


def test_runner_strategies_use_the_pruner_classes(monkeypatch):
    from types import SimpleNamespace

    from nni_bert_tickets.experiments import tables
    ticket = _ticket()
    monkeypatch.setattr(tables, "imp_ticket", lambda config, sparsity: ticket)
    built = []
    for cls in (ReinitPruner, ShuffledPruner):
        original = cls.compress
        monkeypatch.setattr(cls, "compress", lambda self, original=original: built.append(type(self)) or original(self))
    config = SimpleNamespace(seed=3, shuffle_mode="within")
    for kind, function in (("reinit", tables._random_reinit), ("within", tables._shuffled)):
        model = tiny_bert()
        got, load_weights = function(model, config, 0.5, config.seed)
        assert got is ticket and load_weights is False
        got.apply(model, check_weights=False, load_weights=False)
        reference = tiny_bert()
        (reinitialize(reference, seed=3) if kind == "reinit" else shuffle_weights(reference, seed=3, mode="within"))
        ticket.apply(reference, check_weights=False)
        assert _same_state(_state(model), _state(reference)) == []
    assert built == [ReinitPruner, ShuffledPruner]


@pytest.mark.parametrize("cls", [ReinitPruner, ShuffledPruner])
def test_weight_baseline_pruners_refuse_bad_masks_before_anything_changes(cls):
    model = tiny_bert()
    before = _state(model)
    config = bert_config_list(model, 0.5)
    with pytest.raises(ValueError, match="needs a mask to apply"):
        cls(model, config)
    with pytest.raises(ValueError, match="needs a mask to apply"):
        cls(model, config, mask={})
    other = one_shot_magnitude_ticket(tiny_bert(layers=3), 0.5)
    with pytest.raises(TicketError, match="another architecture"):
        cls(model, mask_config_list(tiny_bert(layers=3), other), mask=other)
    wide = tiny_bert(layers=2)
    wide_masks = {name: {"weight": torch.ones(m.weight.shape[0], m.weight.shape[1] + 1)}
                  for name, m in prunable_modules(wide).items()}
    with pytest.raises(TicketError, match="another model"):
        cls(model, config, mask=wide_masks)
    with pytest.raises(TicketError, match="another model"):
        cls(model, config, mask={"bert.encoder.layer.7.output.dense": {"weight": torch.ones(16, 32)}})
    ticket = _ticket()
    with pytest.raises(ValueError, match="sparse_ratio 0.7"):
        cls(model, bert_config_list(model, 0.7), mask=ticket)
    with pytest.raises(ValueError, match="does not select"):
        cls(model, bert_config_list(model, 0.5, pooler=False), mask=ticket)
    assert _same_state(_state(model), before) == []
    assert not any(hasattr(m, "_nni_wrapper") for m in model.modules())
    assert list(dict(model.named_parameters())) == list(dict(tiny_bert().named_parameters()))


def test_shuffled_pruner_refuses_a_model_without_layers_to_permute():
    model = tiny_bert(layers=1)
    ticket = one_shot_magnitude_ticket(model, 0.5)
    with pytest.raises(ValueError, match="mode='within'"):
        ShuffledPruner(model, mask_config_list(model, ticket), mask=ticket, mode="layers")
    with pytest.raises(ValueError, match="'layers' or 'within'"):
        ShuffledPruner(model, mask_config_list(model, ticket), mask=ticket, mode="rows")
    assert not any(hasattr(m, "_nni_wrapper") for m in model.modules())


# ---- torch pruning methods -----------------------------------------------------------------------------------
def test_ticket_mask_per_module_and_global_equals_the_ticket():
    ticket = _ticket(0.6)
    per_module, globally = tiny_bert(), tiny_bert()
    install_torch_prune(per_module, ticket)
    flat = torch.cat([ticket.masks[k].flatten() for k in prunable_weights(globally)])
    prune.global_unstructured(torch_parameters(globally), pruning_method=TicketMask, mask=flat)
    for model in (per_module, globally):
        assert all(prune.is_pruned(m) for m in prunable_modules(model).values())
        back = masks_from_torch_prune(model)
        assert back.keys() == ticket.masks.keys() and all(torch.equal(back[k], m) for k, m in ticket.masks.items())
    # per module, a second mask combines with the first, as torch's custom_from_mask does
    module = prunable_modules(per_module)["bert.encoder.layer.0.attention.self.query"]
    extra = torch.rand(module.weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    first = module.weight_mask.clone()
    TicketMask.apply(module, "weight", mask=extra)
    assert torch.equal(module.weight_mask.bool(), first.bool() & extra)


def test_random_global_is_the_random_pruners_mask():
    model = tiny_bert()
    _, nni_masks = RandomPruner(model, bert_config_list(model, 0.55), seed=9).compress()
    hooked = tiny_bert()
    prune.global_unstructured(torch_parameters(hooked), pruning_method=RandomGlobal, amount=0.55, seed=9)
    back = masks_from_torch_prune(hooked)
    ours = Ticket.from_nni_masks(model, nni_masks).masks
    assert all(torch.equal(back[k], ours[k]) for k in ours)
    # both are random_masks over the matrices in model order, whatever order NNI's sets of names come in
    reference = random_masks(prunable_weights(tiny_bert()), 0.55, seed=9)
    assert reference.keys() == back.keys() and all(torch.equal(back[k], m) for k, m in reference.items())
    # the same strategy function, per module
    single = tiny_bert()
    module = single.bert.encoder.layer[1].output.dense
    RandomGlobal.apply(module, "weight", amount=10, seed=2)
    assert torch.equal(module.weight_mask.bool(), random_masks({"w": module.weight_orig}, 10 / 512, seed=2)["w"])
    assert int((module.weight_mask == 0).sum()) == 10


def test_global_magnitude_steps_nest_and_equal_the_imp_strategy():
    model = tiny_bert()
    weights = {k: w.detach().clone() for k, w in prunable_weights(model).items()}
    parameters = torch_parameters(model)
    assert global_magnitude_step(parameters, 0.3) == round(0.3 * sum(w.numel() for w in weights.values()))
    first = global_magnitude_masks(weights, 0.3)
    assert all(torch.equal(masks_from_torch_prune(model)[k], m) for k, m in first.items())
    with torch.no_grad():  # training moves the survivors; the next step ranks their current values
        for module, _ in parameters:
            module.weight_orig.mul_(torch.linspace(0.5, 1.5, module.weight_orig.numel()).view_as(module.weight_orig))
    current = {k: (m.weight_orig * m.weight_mask).detach() for k, m in
               zip(weights, (module for module, _ in parameters))}
    global_magnitude_step(parameters, 0.5)
    second = global_magnitude_masks(current, 0.5, first)
    back = masks_from_torch_prune(model)
    assert all(torch.equal(back[k], m) for k, m in second.items())
    assert all(bool((back[k] <= first[k]).all()) for k in first)  # nested
    # per module as torch's own L1Unstructured (amount of the survivors)
    a, b = tiny_bert().bert.pooler.dense, tiny_bert().bert.pooler.dense
    GlobalMagnitude.apply(a, "weight", amount=0.25)
    prune.l1_unstructured(b, "weight", amount=0.25)
    assert torch.equal(a.weight_mask, b.weight_mask)


@pytest.mark.parametrize("method, kwargs", [(TicketMask, {"mask": torch.ones(16, 16)}),
                                            (RandomGlobal, {"amount": 0.5}), (GlobalMagnitude, {"amount": 3})])
def test_torch_methods_round_trip_like_torchs_own(method, kwargs):
    model = tiny_bert()
    module = model.bert.encoder.layer[0].attention.self.key
    method.apply(module, "weight", **kwargs)
    assert prune.is_pruned(model)
    x = torch.randint(1, 64, (2, 7))
    logits = model(input_ids=x).logits
    copy_ = tiny_bert(seed=1)
    prune.identity(copy_.bert.encoder.layer[0].attention.self.key, "weight")
    copy_.load_state_dict(model.state_dict())
    assert torch.equal(copy_(input_ids=x).logits, logits)
    prune.remove(module, "weight")
    assert not prune.is_pruned(model) and isinstance(module.weight, torch.nn.Parameter)
    assert torch.equal(model(input_ids=x).logits, logits)
    assert "bert.encoder.layer.0.attention.self.key.weight" in model.state_dict()


def test_torch_methods_refuse_bad_input_before_anything_changes():
    model = tiny_bert()
    module = model.bert.encoder.layer[0].attention.self.query
    before = _state(model)
    with pytest.raises(AttributeError, match="no parameter 'weigth'"):
        GlobalMagnitude.apply(module, "weigth", amount=0.2)
    with pytest.raises(AttributeError, match="no parameter 'weight'"):
        RandomGlobal.apply(model.bert.encoder.layer[0].attention.self.dropout, "weight", amount=0.2)
    with pytest.raises(ValueError, match="shape"):
        TicketMask.apply(module, "weight", mask=torch.ones(4, 4))
    with pytest.raises(ValueError, match="amount"):
        RandomGlobal.apply(module, "weight", amount=1.5)
    with pytest.raises(AttributeError, match="no parameter"):
        global_magnitude_step([(module, "weight"), (model.bert.pooler.activation, "weight")], 0.5)
    assert _same_state(_state(model), before) == [] and not prune.is_pruned(model)
    # on an already pruned weight: an amount beyond the survivors fails before torch takes its hook off
    GlobalMagnitude.apply(module, "weight", amount=200)
    pruned = _state(model)
    with pytest.raises(ValueError, match="every one"):
        GlobalMagnitude.apply(module, "weight", amount=56)
    assert _same_state(_state(model), pruned) == [] and prune.is_pruned(module)


# ---- IMP for plain torch -------------------------------------------------------------------------------------
def _toy_train(steps):
    """The training of conftest.toy_evaluator, as a plain function building its own optimizer each round."""
    loop = toy_evaluator(tiny_bert(), steps=steps).training_func

    def train(model):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
        scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.0, steps)
        loop(model, optimizer, lambda batch, m: m(input_ids=batch[0], labels=batch[1]).loss, scheduler)
    return train


def _toy_evaluate(model):
    with torch.no_grad():
        batches = toy_batches()
        correct = sum(int((model(input_ids=x).logits.argmax(-1) == y).sum()) for x, y in batches)
    acc = correct / sum(len(y) for _, y in batches)
    return {"default": acc, "accuracy": acc}


@pytest.mark.parametrize("rewind", [0, None])
def test_torch_imp_finds_imp_pruners_masks_and_tickets(tmp_path, rewind):
    model = tiny_bert()
    pruner = IMPPruner(model, bert_config_list(model, 0.4), toy_evaluator(model, steps=4), step=0.2, seed=5,
                       rewind=rewind, output_dir=str(tmp_path / "nni"))
    pruner.compress()
    plain = tiny_bert()
    tickets = torch_imp(plain, _toy_train(4), 0.4, evaluate=_toy_evaluate, step=0.2, seed=5, rewind=rewind,
                        output_dir=str(tmp_path / "torch"))
    assert len(tickets) == len(pruner.tickets) == 3
    for ours, theirs in zip(tickets, pruner.tickets):
        assert ours.masks.keys() == theirs.masks.keys()
        assert all(torch.equal(ours.masks[k], theirs.masks[k]) for k in ours.masks)
        assert ours.metadata() == theirs.metadata()  # fingerprints, metrics, schedule, rewind, round, seed, ...
    for r in range(3):
        name = f"ticket-round{r:02d}.safetensors"
        a, b = Ticket.load(tmp_path / "torch" / name), Ticket.load(tmp_path / "nni" / name)
        assert a.metadata() == b.metadata() and all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    # the survivors were rewound in weight_orig (θ0 rewind): the final round started from θ0 under its mask
    assert sum(int((~m).sum()) for m in tickets[-1].masks.values()) > 0
    remove_torch_prune(plain)
    pruner.unwrap_model()
    assert _same_state(_state(plain), _state(model)) == []  # the same trained subnetwork


def test_torch_imp_rewinds_survivors_in_weight_orig_and_refuses_bad_input():
    model = tiny_bert()
    theta0 = {k: v.detach().clone() for k, v in prunable_weights(model).items()}
    starts = []

    def train(m):
        starts.append({k: mod.weight_orig.detach().clone() for k, mod in
                       zip(theta0, prunable_modules(m).values())})
        _toy_train(3)(m)
    tickets = torch_imp(model, train, 0.2, step=0.2)
    mask = tickets[1].masks
    assert all(torch.equal(starts[1][k], torch.where(mask[k], theta0[k], torch.zeros(()))) for k in theta0)
    assert tickets[1].metrics == {"metric": None}
    fresh = tiny_bert()
    before = _state(fresh)
    for kwargs, match in [({"sparsity": 1.0}, "sparsity"), ({"rewind": 3}, "θi"), ({"head": "reinit"}, "head"),
                          ({"schedule": "cubic"}, "schedule")]:
        with pytest.raises(ValueError, match=match):
            torch_imp(fresh, train, **{"sparsity": 0.5, **kwargs})
    with pytest.raises(TypeError, match="train"):
        torch_imp(fresh, None, 0.5)
    assert _same_state(_state(fresh), before) == [] and not prune.is_pruned(fresh) and not starts[3:]
    install_torch_prune(fresh, tickets[-1])
    with pytest.raises(ValueError, match="already pruned"):
        torch_imp(fresh, train, 0.5)
    assert not starts[3:]  # nothing trained


def test_the_pruners_page_snippets_run():
    """docs/pruners.md promises snippets that run as written, top to bottom."""
    import pathlib
    import re
    page = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "pruners.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert len(blocks) >= 5
    namespace = {}
    exec(compile("\n".join(blocks), "docs/pruners.md", "exec"), namespace)
    assert namespace["ticket"].sparsity == pytest.approx(0.5, abs=1e-3) and len(namespace["tickets"]) == 3
