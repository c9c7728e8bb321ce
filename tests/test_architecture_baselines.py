"""Baselines, structured tickets and the experiment runner on every supported architecture (tiny models built
from their configs): θ0′ with the architecture's own initialiser, θ0″ across stored layers, heads and FFN
channels removed through torch-pruning, and Table 2 end to end."""
import math

import pytest
import torch
from transformers import AutoTokenizer

from tiny_models import KINDS, LAYERED, batch, tiny_model
from nni_bert_tickets import prunable_modules, prunable_weights, reinitialize, shuffle_weights
from nni_bert_tickets.core.architectures import ArchitectureError, prunable_matrices
from nni_bert_tickets.core.baselines import init_module_
from nni_bert_tickets.core.structured import StructuredIMP, StructuredTicket, save_structured, structured_ticket_model


def _expected_std(kind, name, config):
    """What each architecture's own initialiser draws (transformers' _init_weights), from the config."""
    r = config.initializer_range
    if kind != "modernbert":
        return r  # N(0, initializer_range)
    c = config.initializer_cutoff_factor  # truncated at ±c std, which shrinks the std
    phi, big_phi = math.exp(-c * c / 2) / math.sqrt(2 * math.pi), 0.5 * (1 + math.erf(c / math.sqrt(2)))
    shrink = math.sqrt(1 - 2 * c * phi / (2 * big_phi - 1))
    out = name.endswith("Wo")  # output projections: scaled down by depth
    return shrink * (r / math.sqrt(2 * config.num_hidden_layers) if out else r)


@pytest.mark.parametrize("kind", KINDS)
def test_theta0_prime_is_the_architectures_own_initialisation(kind):
    model = tiny_model(kind, hidden=64, heads=4, ffn=128, init=0.05)
    body_ids = {id(p) for p in model.base_model.parameters()}
    with torch.no_grad():  # stand-in pre-trained weights, far from any initialiser
        for p in model.base_model.parameters():
            p.normal_(0.3, 0.3)
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    reinitialize(model, seed=5)
    after = dict(model.named_parameters())
    for name, module in prunable_modules(model).items():
        w = module.weight.detach()
        assert not torch.equal(w, theta0[f"{name}.weight"]), name
        assert float(w.mean()) == pytest.approx(0.0, abs=0.1 * _expected_std(kind, name, model.config))
        assert float(w.std()) == pytest.approx(_expected_std(kind, name, model.config), rel=0.08), name
    norms = [m for m in model.base_model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(bool((m.weight == 1).all()) for m in norms if m.weight is not None)
    for name, p in model.named_parameters():  # the task head is left as it was
        if id(p) not in body_ids:
            assert torch.equal(after[name], theta0[name]), name
    again = tiny_model(kind, hidden=64, heads=4, ffn=128, init=0.05)
    reinitialize(again, seed=5)  # seeded: the same θ0′
    assert all(torch.equal(a, b) for a, b in zip(prunable_weights(model).values(), prunable_weights(again).values()))


def test_bert_theta0_prime_is_bitwise_the_previous_release():
    """Cached θ0′ runs of BERT models stay valid: the same draws as the written-out BERT init before."""
    new, old = tiny_model("bert"), tiny_model("bert")
    reinitialize(new, seed=3)
    torch.manual_seed(3)
    for module in old.base_model.modules():
        init_module_(module, old.config.initializer_range)
    assert all(torch.equal(a, b) for a, b in zip(new.parameters(), old.parameters()))


@pytest.mark.parametrize("kind", LAYERED)
def test_theta0_double_prime_permutes_whole_stored_layers(kind):
    model = tiny_model(kind)
    matrices = {n: m for n, m in prunable_matrices(model).items() if not m.pooler}
    modules = prunable_modules(model)
    before = {n: modules[n].weight.detach().clone() for n in modules}
    for seed in range(10):  # the first seed that moves something (with two layers, half the seeds do not)
        shuffle_weights(model, seed=seed, mode="layers")
        if any(not torch.equal(modules[n].weight, before[n]) for n in matrices):
            break
    layers = sorted({m.layer for m in matrices.values()})
    source = {}
    for dst in layers:  # every layer holds, slot by slot, one original layer's matrices
        slots = {m.slot: n for n, m in matrices.items() if m.layer == dst}
        found = [src for src in layers if all(torch.equal(modules[n].weight, before[_at(matrices, src, slot)])
                                              for slot, n in slots.items())]
        assert len(found) == 1, (dst, found)
        source[dst] = found[0]
    assert sorted(source.values()) == layers and any(k != v for k, v in source.items())
    assert all(torch.equal(modules[n].weight, before[n]) for n in modules if n not in matrices)  # pooler stays


def _at(matrices, layer, slot):
    return next(n for n, m in matrices.items() if m.layer == layer and m.slot == slot)


def test_albert_shared_layer_has_nothing_to_permute_but_shuffles_within():
    model = tiny_model("albert")
    with pytest.raises(ValueError, match=r"shares one layer across every depth.*mode='within'"):
        shuffle_weights(model, seed=0, mode="layers")
    before = {k: v.detach().clone() for k, v in prunable_weights(model).items()}
    shuffle_weights(model, seed=0, mode="within")
    for key, w in prunable_weights(model).items():
        assert not torch.equal(w, before[key])
        assert torch.equal(w.flatten().sort().values, before[key].flatten().sort().values)


STRUCTURED = ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v3", "deberta-v2-pos"]


def _dense_out(model, kind, i):
    """(attention output, FFN output) of layer i, named here independently of the library."""
    if kind == "distilbert":
        layer = model.distilbert.transformer.layer[i]
        return layer.attention.out_lin, layer.ffn.lin2
    layer = model.base_model.encoder.layer[i]
    return layer.attention.output.dense, layer.output.dense


@pytest.mark.parametrize("kind", STRUCTURED)
def test_removed_heads_and_channels_equal_masking_them(kind):
    model = tiny_model(kind, hidden=32, heads=4, ffn=64)
    heads, channels = [[0, 2], [1, 2, 3]], [list(range(0, 64, 2)), [1, 5, 7]]
    small = structured_ticket_model(model, StructuredTicket(heads, channels, head_size=8), {"input_ids": batch()})
    reference = tiny_model(kind, hidden=32, heads=4, ffn=64)
    with torch.no_grad():  # a removed head / channel contributes nothing downstream
        for i in range(2):
            attention_out, ffn_out = _dense_out(reference, kind, i)
            for h in set(range(4)) - set(heads[i]):
                attention_out.weight[:, h * 8:(h + 1) * 8] = 0
            ffn_out.weight[:, sorted(set(range(64)) - set(channels[i]))] = 0
    x = batch(seed=3)
    assert torch.allclose(small(input_ids=x).logits, reference(input_ids=x).logits, atol=1e-5)
    assert [(_dense_out(small, kind, i)[0].in_features, _dense_out(small, kind, i)[1].in_features)
            for i in range(2)] == [(8 * len(h), len(c)) for h, c in zip(heads, channels)]


@pytest.mark.parametrize("kind", ["roberta", "deberta-v3"])
def test_structured_imp_rounds_and_rewinds(kind):
    model, seen = tiny_model(kind, hidden=32, heads=4, ffn=64), []

    def fit(m):
        seen.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        return {"default": 0.0}
    imp = StructuredIMP(model, fit, {"input_ids": batch()}, head_sparsity=0.5, channel_sparsity=0.5, step=0.25)
    small = imp.run()
    assert [r["round"] for r in imp.trajectory] == [0, 1, 2]
    assert imp.ticket.head_sparsity == 0.5 and imp.ticket.channel_sparsity == 0.5
    expected = structured_ticket_model(model, imp.ticket, {"input_ids": batch()}).state_dict()
    key = next(k for k in expected if "layer.0.attention.self.query" in k and k.endswith("weight"))
    assert torch.equal(seen[2][key], expected[key]) and seen[2][key].shape[0] == 8 * len(imp.ticket.heads[0])
    assert small(input_ids=batch()).logits.shape == (4, 2)
    with pytest.raises(ValueError, match="save_structured writes a BERT model"):
        save_structured(small, imp.ticket, "unused")


@pytest.mark.parametrize("kind", ["modernbert", "albert"])
def test_structured_tickets_refuse_unsupported_types_before_any_work(kind):
    def fit(m):
        raise AssertionError("trained an unsupported model")
    with pytest.raises(ArchitectureError, match=r"support the model types .*deberta-v2.*roberta"):
        StructuredIMP(tiny_model(kind), fit, {"input_ids": batch()})


RUNNER = ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v3", "modernbert", "albert"]


def _saved(model, kind, path, minilm_path):
    """The model with a tokenizer beside it (the embedded model's vocabulary), as the runner loads it."""
    model.save_pretrained(path)
    names = {"model_input_names": ["input_ids", "attention_mask"]} \
        if kind in ("roberta", "xlm-roberta", "distilbert", "modernbert") else {}  # as their own tokenizers
    AutoTokenizer.from_pretrained(minilm_path, **names).save_pretrained(path)
    return str(path)


def _settings(path, glue_dir, tmp_path, **overrides):
    return dict(task="sst2", model=path, data_dir=glue_dir, max_train_samples=16, max_eval_samples=16,
                batch_size=8, max_steps=1, max_length=32, target_sparsity=0.2, step=0.2, seeds=2,
                head="rewind", baselines=["random_reinit", "shuffled"],  # the two that depend on the layout
                baseline_sparsities=[0.2], output_root=str(tmp_path / "runs"), **overrides)


@pytest.mark.parametrize("kind", RUNNER)
def test_table2_runs_on_each_architecture(kind, tmp_path, minilm_path, glue_dir):
    from nni_bert_tickets.experiments.config import ExperimentConfig
    from nni_bert_tickets.experiments.tables import imp_ticket, table2

    model = tiny_model(kind, vocab=len(AutoTokenizer.from_pretrained(minilm_path)))
    settings = _settings(_saved(model, kind, tmp_path / kind, minilm_path), glue_dir, tmp_path)
    if kind == "albert":  # one shared layer: θ0″ across layers is refused before any training
        with pytest.raises(ValueError, match="nothing to permute"):
            table2(ExperimentConfig(**settings).validate())
        assert not (tmp_path / "runs").exists()
        settings["shuffle_mode"] = "within"
    config = ExperimentConfig(**settings).validate()
    result = table2(config)
    (row,) = result["rows"]
    assert {"imp", "random_reinit", "shuffled"} <= set(row)
    ticket = imp_ticket(config, 0.2)
    assert ticket.model_type == model.config.model_type
    assert set(ticket.masks) == set(prunable_weights(model)) and ticket.sparsity == pytest.approx(0.2, abs=1e-3)


def test_runner_refuses_an_unknown_architecture_before_any_training(tmp_path, minilm_path, glue_dir):
    from transformers import DebertaConfig, DebertaForSequenceClassification
    from nni_bert_tickets.experiments.config import ExperimentConfig
    from nni_bert_tickets.experiments.imp_run import run_imp
    from nni_bert_tickets.experiments.tables import table2, table3

    model = DebertaForSequenceClassification(DebertaConfig(vocab_size=len(AutoTokenizer.from_pretrained(minilm_path)),
                                                           hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                                           intermediate_size=32))
    config = ExperimentConfig(**_settings(_saved(model, "deberta", tmp_path / "v1", minilm_path), glue_dir,
                                          tmp_path)).validate()
    for run in (table2, table3, run_imp):
        with pytest.raises(ArchitectureError, match="'deberta'.*not a known architecture.*in_proj"):
            run(config)
    assert not (tmp_path / "runs").exists()
