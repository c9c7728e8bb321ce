"""The shared dense round: IMP runs that start with the same round 0 read it back instead of training it, and end
exactly where runs that trained it themselves end."""
import os

import pytest
import torch

from conftest import tiny_bert, toy_evaluator
from nni_bert_tickets import IMPPruner, bert_config_list
from nni_bert_tickets.core.dense_round import END_FILE, DenseRound
from nni_bert_tickets.core.early_stop import EarlyStop
from nni_bert_tickets.core.rewind import Rewind

STEPS = 6  # the toy round's length; fraction 0.5 is step 3


def _run(rewind, store=None, output_dir=None, kill_after=None, seed=0):
    """An IMP run on a fresh tiny model; returns (pruner, number of rounds trained). ``kill_after``: the first round
    trains that many steps, then the run dies."""
    model = tiny_bert()
    evaluator = toy_evaluator(model, steps=STEPS)
    calls = []
    train = evaluator.train

    def counted(max_steps=None, max_epochs=None):
        calls.append(max_steps)
        if kill_after is not None and len(calls) == 1:
            train(kill_after, max_epochs)
            raise RuntimeError("killed")
        return train(max_steps, max_epochs)
    evaluator.train = counted
    pruner = IMPPruner(model, bert_config_list(model, 0.3, pooler=False), evaluator, step=0.15, rewind=rewind,
                       seed=seed, dense_round=store, output_dir=output_dir)
    pruner.compress(max_steps=STEPS)
    return pruner, len(calls)


def _same(a, b):
    assert a.trajectory == b.trajectory
    masks_a, masks_b = a.get_masks(), b.get_masks()
    assert masks_a.keys() == masks_b.keys()
    for name in masks_a:
        assert torch.equal(masks_a[name]["weight"], masks_b[name]["weight"]), name
    assert len(a.tickets) == len(b.tickets)
    for ta, tb in zip(a.tickets, b.tickets):
        assert ta.masks.keys() == tb.masks.keys() and all(torch.equal(ta.masks[k], tb.masks[k]) for k in ta.masks)
        assert ta.metrics == tb.metrics and ta.rewind == tb.rewind
        assert (ta.weights is None) == (tb.weights is None)
        if ta.weights is not None:
            assert all(torch.equal(ta.weights[k], tb.weights[k]) for k in ta.weights)
    for (name, pa), (_, pb) in zip(a.bound_model.named_parameters(), b.bound_model.named_parameters()):
        assert torch.equal(pa, pb), name


def test_runs_sharing_the_dense_round_equal_runs_that_train_it(tmp_path):
    store = DenseRound(tmp_path / "dense", rewinds=[0, 0.5, 2])
    assert store.rewinds == [Rewind(0.5), Rewind(2)]  # θ0 takes no snapshot
    for rewind in (0, 0.5, None, 2):
        alone, rounds = _run(rewind)
        shared, shared_rounds = _run(rewind, store)
        _same(shared, alone)
        levels = len(alone.levels)
        assert rounds == levels  # every round trained
        # the first run trains round 0 for all of them (θ0 needs no snapshot, but it takes θ3 and θ2 for the others)
        assert shared_rounds == (levels if rewind == 0 else levels - 1)
    assert sorted(os.listdir(tmp_path / "dense")) == [".lock", END_FILE, "theta_i-0.5.safetensors",
                                                      "theta_i-2.safetensors"]
    # a rewind point the folder was not asked for: round 0 is trained again, and its snapshot then kept
    alone, _ = _run(1)
    shared, rounds = _run(1, store)
    _same(shared, alone)
    assert rounds == len(alone.levels) and (tmp_path / "dense" / "theta_i-1.safetensors").exists()
    assert _run(1, store)[1] == len(alone.levels) - 1


def test_a_run_killed_in_the_dense_round_keeps_its_snapshots_and_ends_the_same(tmp_path):
    store = DenseRound(tmp_path / "dense", rewinds=[0.5])
    with pytest.raises(RuntimeError, match="killed"):
        _run(0.5, store, output_dir=str(tmp_path / "run"), kill_after=4)  # after θ3, before the round's end
    snapshot = tmp_path / "dense" / "theta_i-0.5.safetensors"
    assert snapshot.exists() and not (tmp_path / "dense" / END_FILE).exists()
    taken = snapshot.stat().st_mtime_ns
    (tmp_path / "dense" / ".tmp-abc").write_bytes(b"")  # what a SIGKILL in the middle of a write leaves
    resumed, rounds = _run(0.5, store, output_dir=str(tmp_path / "run"))
    alone, _ = _run(0.5)
    _same(resumed, alone)
    assert rounds == len(alone.levels) and snapshot.stat().st_mtime_ns == taken  # kept, not taken again
    assert not (tmp_path / "dense" / ".tmp-abc").exists()  # removed by the next holder of the folder's lock
    other, rounds = _run(0.5, store, output_dir=str(tmp_path / "other"))
    _same(other, alone)
    assert rounds == len(alone.levels) - 1


def test_bad_dense_rounds_are_refused(tmp_path):
    model = tiny_bert()
    config_list = bert_config_list(model, 0.3, pooler=False)
    with pytest.raises(TypeError, match="dense_round"):
        IMPPruner(model, config_list, toy_evaluator(model), dense_round=str(tmp_path))
    with pytest.raises(ValueError, match="early_stop"):
        IMPPruner(model, config_list, toy_evaluator(model), dense_round=DenseRound(tmp_path),
                  early_stop=EarlyStop(2, 0.01, 2))
    store = DenseRound(tmp_path / "dense")
    _run(0, store)
    with pytest.raises(ValueError, match="another model or seed"):  # a folder of another start is never read
        _run(0, store, seed=1)


def test_the_runner_shares_round_zero_by_exactly_what_it_depends_on(tmp_path, minilm_path, glue_dir, monkeypatch):
    """run_imp keeps round 0 in <output_root>/dense-<task>-<hash>; runs differing in rewind or target share it and
    end as runs that trained it; run names do not change; no sharing under early stopping or when switched off."""
    import dataclasses
    import json
    from nni_bert_tickets.experiments.config import ExperimentConfig
    from nni_bert_tickets.experiments.imp_run import dense_round_dir, imp_run_dir, run_imp
    from nni_bert_tickets.experiments.tables import ticket_at
    from nni_bert_tickets.training.loop import FineTuner
    calls = []
    train = FineTuner.train
    monkeypatch.setattr(FineTuner, "train", lambda self, *a, **k: (calls.append(1), train(self, *a, **k))[1])
    config = ExperimentConfig(task="wnli", model=minilm_path, data_dir=glue_dir, max_train_samples=32,
                              max_eval_samples=16, batch_size=16, max_length=32, max_steps=2, target_sparsity=0.1,
                              step=0.1, rewind_points=[0, 0.5], experiment="table3",  # Table 3 asks for its θi
                              output_root=str(tmp_path / "shared")).validate()
    half = dataclasses.replace(config, rewind=0.5)
    alone = dataclasses.replace(half, output_root=str(tmp_path / "alone"), share_dense_round=False)
    assert dense_round_dir(config) == dense_round_dir(half) == dense_round_dir(dataclasses.replace(
        config, target_sparsity=0.2, rewind=None))
    assert dense_round_dir(config).name.startswith("dense-wnli-") and dense_round_dir(alone) is None
    assert dense_round_dir(dataclasses.replace(config, seed=1)) != dense_round_dir(config)
    assert dense_round_dir(dataclasses.replace(config, early_stop_every=1)) is None
    assert alone.run_name() == half.run_name()  # the switch is not part of any run's name
    run_imp(config)
    assert len(calls) == 2 and (dense_round_dir(config) / "theta_i-0.5.safetensors").exists()
    shared = run_imp(half)
    assert len(calls) == 3  # round 0 read back
    expected = run_imp(alone)
    assert len(calls) == 5 and not list((tmp_path / "alone").glob("dense-*"))
    assert json.dumps(shared["trajectory"]) == json.dumps(expected["trajectory"])
    # an N:M pattern acts only when pruning, after round 0: a 2:4 run reads the unstructured runs' round 0 back
    nm = dataclasses.replace(half, pattern="2:4")
    assert dense_round_dir(nm) == dense_round_dir(config) and nm.run_name() != half.run_name()
    nm_shared = run_imp(nm)
    assert len(calls) == 6  # its round 1 only
    nm_alone = run_imp(dataclasses.replace(nm, output_root=str(tmp_path / "alone"), share_dense_round=False))
    assert len(calls) == 8
    assert json.dumps(nm_shared["trajectory"]) == json.dumps(nm_alone["trajectory"])
    masks = [ticket_at(imp_run_dir(c), 0.1).masks for c in (nm, dataclasses.replace(nm, output_root=alone.output_root))]
    assert masks[0].keys() == masks[1].keys() and all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])
    assert all(bool((m.reshape(-1, 4).sum(dim=1) >= 2).all()) for m in masks[0].values())  # nested in a 2:4 mask
    # a run outside Table 3 keeps round 0 but takes no snapshot of rewind_points (each is a full parameter copy)
    plain = dataclasses.replace(config, experiment="imp", output_root=str(tmp_path / "plain"))
    run_imp(plain)
    assert (dense_round_dir(plain) / "dense_end.safetensors").exists()
    assert not list(dense_round_dir(plain).glob("theta_i-*"))
