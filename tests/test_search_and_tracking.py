"""Early-stopped IMP search rounds (issue 11, "Cheaper search") and Accelerate trackers ("Watching runs")."""
import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import tiny_bert, tiny_checkpoint, toy_evaluator
from nni_bert_tickets import IMPPruner, bert_config_list
from nni_bert_tickets.experiments.cli import parse_args
from nni_bert_tickets.experiments.config import ExperimentConfig
from nni_bert_tickets.core.early_stop import EarlyStop, RoundWatch, StopTraining, mask_distance
from nni_bert_tickets.experiments.imp_run import run_imp
from nni_bert_tickets.experiments.tables import full_model
from nni_bert_tickets.core.ticket import Ticket
from nni_bert_tickets.training import FineTuner

BUDGET = 30  # toy steps per round


def _imp(early_stop=None, target=0.3, max_steps=None):
    model = tiny_bert()
    evaluator = toy_evaluator(model, steps=BUDGET, lr=1e-4)
    pruner = IMPPruner(model, bert_config_list(model, target), evaluator, step=0.1, early_stop=early_stop)
    pruner.compress(max_steps=max_steps)
    return pruner, model


def _masks(ticket):
    return {k: v.clone() for k, v in ticket.masks.items()}


def test_search_rounds_stop_once_the_next_mask_settles_and_the_last_round_trains_fully():
    stop = EarlyStop(check_every=2, threshold=0.2, patience=2)
    pruner, model = _imp(stop)
    search, last = pruner.trajectory[:-1], pruner.trajectory[-1]
    assert [r["target_sparsity"] for r in pruner.trajectory] == [0.0, 0.1, 0.2, 0.3]
    for record in search:  # cut short before the budget, after `patience` calm checks, and given no verdict
        assert record["early_stopped"] and record["steps"] < BUDGET and record["metric"] is None
        checks = record["mask_checks"]
        assert record["steps"] == checks[-1][0] and all(d < 0.2 for _, d in checks[-2:])
        assert [s for s, _ in checks] == list(range(4, record["steps"] + 1, 2))  # the first check has no previous
    assert not last["early_stopped"] and last["steps"] == BUDGET and last["metric"] is not None
    assert abs(last["sparsity"] - 0.3) < 1e-3
    pruner.unwrap_model()
    for key, mask in pruner.tickets[-1].masks.items():  # pruned weights are exactly 0 after the last full round
        weight = dict(model.named_parameters())[f"bert.{key}"]
        assert torch.all(weight[~mask] == 0) and mask.sum() < mask.numel()
    for a, b in zip(pruner.tickets, pruner.tickets[1:]):  # nested: no weight revived
        assert all(not (b.masks[k] & ~a.masks[k]).any() for k in a.masks)


def test_an_early_stopped_mask_is_the_mask_of_the_weights_where_the_round_stopped():
    """Level 1's mask equals that of a plain IMP run trained exactly as many steps as the search round took (same
    seed, same schedule); a watch that never fires changes nothing against a plain run."""
    stopped, _ = _imp(EarlyStop(check_every=2, threshold=0.2, patience=2), target=0.1)
    at = stopped.trajectory[0]["steps"]
    assert at < BUDGET
    truncated, _ = _imp(None, target=0.1, max_steps=at)
    assert all(torch.equal(stopped.tickets[1].masks[k], truncated.tickets[1].masks[k]) for k in truncated.tickets[1].masks)
    full, _ = _imp(None, target=0.1)  # the full round's mask: close to the searched one, not the same
    searched, trained = (torch.cat([t.masks[k].flatten() for k in sorted(t.masks)]) for t in (stopped.tickets[1],
                                                                                          full.tickets[1]))
    assert 0 < mask_distance(searched, trained, torch.ones_like(trained)) < 0.2

    never, _ = _imp(EarlyStop(check_every=2, threshold=0.0, patience=1), target=0.2)
    plain, _ = _imp(None, target=0.2)
    assert [r["steps"] for r in never.trajectory] == [r["steps"] for r in plain.trajectory] == [BUDGET] * 3
    assert [r["metric"] for r in never.trajectory] == [r["metric"] for r in plain.trajectory]
    assert not any(r["early_stopped"] for r in never.trajectory) and "early_stopped" not in plain.trajectory[0]
    for a, b in zip(never.tickets, plain.tickets):
        assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)


def test_with_theta_i_rewinding_the_first_round_stops_only_after_the_snapshot():
    model = tiny_bert()
    pruner = IMPPruner(model, bert_config_list(model, 0.2), toy_evaluator(model, steps=BUDGET, lr=1e-4), step=0.1,
                       rewind=12, early_stop=EarlyStop(check_every=2, threshold=0.2, patience=2))
    pruner.compress()
    first, second = pruner.trajectory[:2]
    calm_before = [d < 0.2 for step, d in first["mask_checks"] if step < 12]
    assert len(calm_before) >= 2 and all(calm_before)  # settled by step 6, held back until θ12 was taken
    assert first["early_stopped"] and first["steps"] == 12
    assert second["early_stopped"] and second["steps"] < 12  # later rounds stop as soon as the mask settles
    assert pruner.tickets[-1].rewind == "theta_i:12" and pruner.trajectory[-1]["steps"] == BUDGET


def test_mask_distance_and_bad_settings():
    current = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0], dtype=torch.bool)
    a = torch.tensor([0, 0, 1, 1, 1, 1, 0, 0], dtype=torch.bool)   # prunes weights 0, 1
    b = torch.tensor([0, 1, 0, 1, 1, 1, 0, 0], dtype=torch.bool)   # prunes weights 0, 2
    assert mask_distance(a, a, current) == 0.0 and mask_distance(a, b, current) == 0.5
    assert mask_distance(a, torch.tensor([1, 1, 0, 0, 1, 1, 0, 0], dtype=torch.bool), current) == 1.0
    for bad in (dict(check_every=0), dict(patience=1.5), dict(threshold=2), dict(threshold=-0.1)):
        with pytest.raises(ValueError, match="EarlyStop"):
            EarlyStop(**bad)
    with pytest.raises(TypeError, match="EarlyStop"):
        _imp(early_stop={"check_every": 2})
    with pytest.raises(ValueError, match="early_stop_every"):
        parse_args(["--early-stop-every", "-1"])
    with pytest.raises(ValueError, match="early stopping is off"):
        parse_args(["--early-stop-threshold", "0.05"])
    with pytest.raises(ValueError, match="threshold"):
        parse_args(["--early-stop-every", "5", "--early-stop-threshold", "1.5"])
    base = ExperimentConfig(task="rte")
    assert ExperimentConfig(task="rte", early_stop_every=10).run_name() != base.run_name()  # other masks
    assert ExperimentConfig(task="rte", report_to=["tensorboard"]).run_name() == base.run_name()  # only watching
    assert ExperimentConfig(task="rte", early_stop_every=10).early_stop() == EarlyStop(10, 0.01, 3)


def test_a_watch_raises_only_when_allowed_and_round_trips_its_state():
    masks = [{"m": {"weight": torch.tensor([1.0, 0.0, 1.0, 1.0])}}] * 3
    current = {"m": {"weight": torch.ones(4)}}
    held = RoundWatch(EarlyStop(1, 0.5, 1), lambda: masks[0], current, may_stop=lambda: False)
    for _ in range(3):
        held()
    assert held.stopped_at is None and held.checks == [(2, 0.0), (3, 0.0)]
    watch = RoundWatch(EarlyStop(1, 0.5, 1), lambda: masks[0], current)
    watch()
    again = RoundWatch(EarlyStop(1, 0.5, 1), lambda: masks[0], current, current_step=lambda: 2)
    again.load_state_dict(watch.state_dict())
    with pytest.raises(StopTraining):
        again()
    assert again.stopped_at == 2 and again.checks == [(2, 0.0)]


def _config(tmp_path, minilm_path, glue_dir, **overrides):
    settings = dict(task="rte", model=minilm_path, data_dir=glue_dir, max_train_samples=32, max_eval_samples=32,
                    batch_size=16, max_length=64, max_steps=8, target_sparsity=0.2, step=0.1, learning_rate=1e-4,
                    seed=3, head="rewind", early_stop_every=2, early_stop_threshold=0.2, early_stop_patience=2,
                    output_root=str(tmp_path))
    settings.update(overrides)
    return ExperimentConfig(**settings).validate()


def _scalars(folder: Path):
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_early_stopped_run_resumes_mid_round_to_the_same_stop_and_logs_to_tensorboard(tmp_path, minilm_path,
                                                                                      glue_dir, monkeypatch):
    """FineTuner stops a search round when told; a kill inside a search round resumes from the step checkpoint,
    with the watch's state, to the same stop, masks and metrics. The uninterrupted run logs to TensorBoard."""
    minilm_path = tiny_checkpoint(tmp_path / "tiny-bert", minilm_path)  # the logic needs no 6-layer model
    straight = run_imp(_config(tmp_path / "a", minilm_path, glue_dir, report_to=["tensorboard"]))
    search = straight["trajectory"][:-1]
    assert all(r["early_stopped"] and r["steps"] < 8 and r["metric"] is None for r in search)
    assert straight["trajectory"][-1]["steps"] == 8 and straight["trajectory"][-1]["metric"] is not None
    assert straight["steps"] == sum(r["steps"] for r in straight["trajectory"]) < 3 * 8

    config = _config(tmp_path / "b", minilm_path, glue_dir, checkpoint_steps=2)
    imp_dir = tmp_path / "b" / config.run_name() / "imp"
    original, seen = FineTuner.training_step, []
    kill_at = search[0]["steps"] + 4  # the 4th step of round 1, after its step-2 checkpoint (and first check)

    def killed(batch, model):
        seen.append(1)
        if len(seen) == kill_at:
            raise KeyboardInterrupt("simulated kill")
        return original(batch, model)
    monkeypatch.setattr(FineTuner, "training_step", staticmethod(killed))
    with pytest.raises(KeyboardInterrupt):
        run_imp(config)
    assert (imp_dir / "step-checkpoint" / "extra-early_stop.safetensors").exists()
    monkeypatch.setattr(FineTuner, "training_step", staticmethod(original))
    resumed = run_imp(config)
    assert resumed["trajectory"] == straight["trajectory"]  # steps, checks, stops, metrics
    for level in range(3):
        a = Ticket.load(tmp_path / "a" / config.run_name() / "imp" / f"ticket-round{level:02d}.safetensors")
        b = Ticket.load(imp_dir / f"ticket-round{level:02d}.safetensors")
        assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert not (tmp_path / "b" / "tracking").exists()  # no report_to: no tracker files

    logged = _scalars(tmp_path / "a" / "tracking" / config.run_name())
    steps = [s for s, _ in logged["train/loss"]]
    assert steps == list(range(1, straight["steps"] + 1))  # one point per step, rounds one after another
    assert len(logged["train/lr"]) == len(steps) and logged["train/lr"][0][1] == pytest.approx(1e-4)
    assert [(s, pytest.approx(v)) for s, v in logged["imp/sparsity"]] == \
        [(r["round"], r["sparsity"]) for r in straight["trajectory"]]
    assert logged["imp/metric"] == [(2, pytest.approx(straight["trajectory"][-1]["metric"]))]  # verdicts only
    assert [v for _, v in logged["imp/steps"]] == [r["steps"] for r in straight["trajectory"]]


def test_each_unit_logs_its_own_tracker_run(tmp_path, minilm_path, glue_dir):
    config = _config(tmp_path, minilm_path, glue_dir, max_steps=2, early_stop_every=0, early_stop_threshold=0.01,
                     early_stop_patience=3, report_to=["tensorboard"])
    full_model(config, 3, None)  # no accelerator given: nothing logs
    assert not (tmp_path / "tracking").exists()
    from nni_bert_tickets.experiments.tracking import make_accelerator
    accelerator = make_accelerator(config.report_to, config.output_root)
    results = {seed: full_model(config, seed, accelerator)["default"] for seed in (5, 6)}
    runs = sorted(p for p in (tmp_path / "tracking").iterdir())
    assert [p.name for p in runs] == sorted(p.name for p in tmp_path.glob("full-rte-*")
                                            if json.loads((p / "settings.json").read_text())["seed"] in (5, 6))
    for run in runs:
        logged = _scalars(run)
        seed = json.loads((tmp_path / run.name / "settings.json").read_text())["seed"]
        assert logged["eval/default"] == [(0, pytest.approx(results[seed]))]
        assert [s for s, _ in logged["train/loss"]] == [1, 2]


def test_bad_report_to_is_refused_before_any_work(monkeypatch):
    with pytest.raises(ValueError, match="unknown tracker 'tensorbord'"):
        parse_args(["--report-to", "tensorbord"])
    import nni_bert_tickets.experiments.tracking as tracking
    monkeypatch.setattr(tracking, "get_available_trackers", lambda: [])
    with pytest.raises(ValueError, match=r"nni_bert_tickets\[tensorboard\]"):
        parse_args(["--report-to", "tensorboard"])
    assert ExperimentConfig(report_to="wandb").report_to == ["wandb"]  # a YAML scalar is one tracker
