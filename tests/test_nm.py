"""N:M masks (2:4): global magnitude pruning capped per group of M consecutive input weights."""
import pytest
import torch

from nni_bert_tickets.core.masks import is_nm, nm_magnitude_masks, parse_nm, sparsity


def _weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(8, 16, generator=g), "b": torch.randn(4, 32, generator=g) * 0.5}


def _reference_2_4(weights):
    """Keep the two largest |w| of every four consecutive input weights, group by group, in plain Python."""
    out = {}
    for name, w in weights.items():
        keep = torch.zeros_like(w, dtype=torch.bool)
        for r in range(w.shape[0]):
            for c in range(0, w.shape[1], 4):
                group = [abs(float(w[r, c + j])) for j in range(4)]
                for j in sorted(range(4), key=lambda j: -group[j])[:2]:
                    keep[r, c + j] = True
        out[name] = keep
    return out


def test_at_half_sparsity_the_masks_are_exactly_2_4_by_magnitude():
    weights = _weights()
    masks = nm_magnitude_masks(weights, 0.5, 2, 4)
    assert is_nm(masks, 2, 4) and sparsity(masks) == 0.5
    reference = _reference_2_4(weights)
    assert all(torch.equal(masks[k], reference[k]) for k in weights)


def test_imp_rounds_approach_the_pattern_and_end_on_it():
    weights = _weights(1)
    masks = None
    for level in (0.1, 0.2, 0.3, 0.4, 0.5):
        new = nm_magnitude_masks(weights, level, 2, 4, masks)
        assert sum(int((~m).sum()) for m in new.values()) == round(level * 256)  # as torch rounds
        if masks is not None:  # nested: no weight revived
            assert all(bool((new[k] <= masks[k]).all()) for k in new)
        for k, w in weights.items():  # never more than two of four pruned; the pruned are the smallest allowed
            groups = new[k].reshape(-1, 4)
            assert bool((groups.sum(1) >= 2).all())
        masks = new
        weights = {k: w * (1 + 0.3 * torch.rand_like(w)) for k, w in weights.items()}  # training moves weights
    assert is_nm(masks, 2, 4)


def test_the_pruned_are_the_globally_smallest_each_group_may_lose():
    weights = _weights(2)
    masks = nm_magnitude_masks(weights, 0.3, 2, 4)
    pruned, allowed = [], []
    for k, w in weights.items():
        groups, kept = w.abs().reshape(-1, 4), masks[k].reshape(-1, 4)
        two_smallest = groups.argsort(dim=1)[:, :2]
        for g in range(groups.shape[0]):
            for j in two_smallest[g].tolist():
                (allowed if kept[g, j] else pruned).append(float(groups[g, j]))
        assert bool((~kept).sum(1).le(2).all())
    assert max(pruned) <= min(allowed)


@pytest.mark.parametrize("pattern, message", [("4:2", "0 < N < M"), ("2-4", "two whole numbers"),
                                              ("0:4", "0 < N < M")])
def test_bad_patterns_are_refused(pattern, message):
    with pytest.raises(ValueError, match=message):
        parse_nm(pattern)


def test_a_pattern_that_cannot_hold_is_refused_naming_the_matrix_or_setting():
    with pytest.raises(ValueError, match=r"odd: input dimension \(6,\) is not divisible by M = 4"):
        nm_magnitude_masks({"odd": torch.randn(4, 6)}, 0.5, 2, 4)
    with pytest.raises(ValueError, match="sparsity 0.6 is beyond what a 2:4 pattern allows"):
        nm_magnitude_masks(_weights(), 0.6, 2, 4)
    unstructured = {k: torch.ones_like(w, dtype=torch.bool) for k, w in _weights().items()}
    unstructured["a"][0, :3] = False  # three of one group of four already gone
    with pytest.raises(ValueError, match="not nested in any 2:4 mask"):
        nm_magnitude_masks(_weights(), 0.5, 2, 4, unstructured)


def test_imp_with_a_2_4_pattern_ends_on_it_and_keeps_it_through_training_and_files(tmp_path):
    from conftest import tiny_bert, toy_evaluator
    from nni_bert_tickets import IMPPruner, Ticket, bert_config_list

    model = tiny_bert()
    pruner = IMPPruner(model, bert_config_list(model, 0.5), toy_evaluator(model), step=0.25, rewind=0,
                       head="rewind", pattern="2:4")
    _, masks = pruner.compress()
    pruner.unwrap_model()
    final = {f"{name}.weight": m["weight"].bool() for name, m in masks.items()}
    assert is_nm(final, 2, 4) and [t.sparsity for t in pruner.tickets] == pytest.approx([0, 0.25, 0.5])
    for earlier, later in zip(pruner.tickets, pruner.tickets[1:]):  # nested, never more than 2 of 4 gone
        assert all(bool((later.masks[k] <= earlier.masks[k]).all()) for k in later.masks)
        assert all(bool((m.reshape(-1, 4).sum(1) >= 2).all()) for m in later.masks.values())
    params = dict(model.named_parameters())
    assert all(bool((params[k][~m] == 0).all()) for k, m in final.items())  # pruned weights exactly zero
    pruner.tickets[-1].save(tmp_path / "t.safetensors")
    assert is_nm(Ticket.load(tmp_path / "t.safetensors").masks, 2, 4)


def test_a_pattern_imp_cannot_reach_is_refused_before_the_model_is_wrapped():
    from conftest import tiny_bert, toy_evaluator
    from nni_bert_tickets import IMPPruner, bert_config_list

    model = tiny_bert()
    with pytest.raises(ValueError, match="beyond what a 2:4 pattern allows"):
        IMPPruner(model, bert_config_list(model, 0.6), toy_evaluator(model), pattern="2:4")
    with pytest.raises(ValueError, match=r"attention\.self\.query.*not divisible by M = 3"):
        IMPPruner(model, bert_config_list(model, 0.3), toy_evaluator(model), pattern="1:3")
    assert not any("_nni_wrapper" in name or "wrapper" in type(m).__name__.lower() for name, m in model.named_modules())


def test_one_shot_2_4_of_theta0_and_the_config_refusal():
    from conftest import tiny_bert
    from nni_bert_tickets.core.baselines import one_shot_magnitude_ticket
    from nni_bert_tickets.core.ticket import prunable_weights
    from nni_bert_tickets.experiments.config import ExperimentConfig

    model = tiny_bert()
    ticket = one_shot_magnitude_ticket(model, 0.5, pattern="2:4")
    reference = nm_magnitude_masks(prunable_weights(model), 0.5, 2, 4)
    assert is_nm(ticket.masks, 2, 4) and all(torch.equal(ticket.masks[k], reference[k]) for k in reference)
    with pytest.raises(ValueError, match="target_sparsity 0.7 is beyond what the 2:4 pattern allows"):
        ExperimentConfig(task="rte", target_sparsity=0.7, pattern="2:4").validate()
    assert ExperimentConfig(task="rte", target_sparsity=0.5, pattern="2:4").validate().run_name() != \
        ExperimentConfig(task="rte", target_sparsity=0.5).validate().run_name()


def _semi_structured_benchmark():
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "semi_structured", Path(__file__).resolve().parents[1] / "benchmarks" / "semi_structured.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_semi_structured_benchmark_times_a_model_whose_prunable_matrices_are_exactly_2_4():
    from nni_bert_tickets.core.targets import prunable_modules
    bench = _semi_structured_benchmark()
    model = bench.two_four_model("tiny")
    modules = prunable_modules(model, pooler=False)
    assert len(modules) == 6  # q, k, v, attention output, intermediate, output of its one layer
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)  # the same random model, unmasked: the independent reference's input
    original = prunable_modules(BertForSequenceClassification(BertConfig(vocab_size=30522, **bench.SHAPES["tiny"])),
                                pooler=False)
    reference = _reference_2_4({name: m.weight.detach() for name, m in original.items()})
    for name, module in modules.items():  # each group of 4 consecutive input weights: its 2 largest kept
        assert torch.equal(module.weight.detach() != 0, reference[name]), name
    assert bool((model.bert.pooler.dense.weight != 0).all())  # the pooler stays dense


def test_the_semi_structured_benchmark_refuses_a_cpu_and_claims_no_speed_up(capsys):  # with or without a GPU
    bench = _semi_structured_benchmark()
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--shapes", "tiny", "--device", "cpu"])
    assert exit_info.value.code == 2
    assert "no CPU speed-up is claimed" in capsys.readouterr().err


def test_the_semi_structured_benchmark_refuses_cutlass_where_torch_has_no_cutlass_kernels(monkeypatch, capsys):
    bench = _semi_structured_benchmark()  # torch builds its CUTLASS 2:4 kernels for compute capability 8.x only
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    monkeypatch.setattr(bench, "measure", lambda *a: pytest.fail("measured before refusing"))
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--shapes", "tiny", "--backends", "cusparselt", "cutlass"])
    assert exit_info.value.code == 2
    assert "CUTLASS 2:4 kernels run on compute capability 8.x only; NVIDIA H200 has 9.0" in capsys.readouterr().err
