"""The GLUE experiment end to end on the embedded model and real data: run dirs, rerun, kill-and-resume."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import kill_training_at_call, tiny_checkpoint
import torch

from nni_bert_tickets.experiments.config import ExperimentConfig
from nni_bert_tickets.experiments.imp_run import run_imp
from nni_bert_tickets.tasks import DataError
from nni_bert_tickets.core.ticket import Ticket
from nni_bert_tickets.training.loop import FineTuner

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path, minilm_path, glue_dir, **overrides):
    settings = dict(task="rte", model=minilm_path, data_dir=glue_dir, max_train_samples=48, max_eval_samples=32,
                    batch_size=16, max_steps=2, target_sparsity=0.2, step=0.1, learning_rate=1e-4, seed=3,
                    output_root=str(tmp_path))
    settings.update(overrides)
    return ExperimentConfig(**settings).validate()


def test_kill_and_resume_gives_identical_masks_and_metrics(tmp_path, minilm_path, glue_dir, monkeypatch):
    straight = run_imp(_config(tmp_path / "a", minilm_path, glue_dir))
    assert [round(r["target_sparsity"], 6) for r in straight["trajectory"]] == [0.0, 0.1, 0.2]

    config = _config(tmp_path / "b", minilm_path, glue_dir, keep="tickets")  # not part of the run's name
    assert config.run_name() == _config(tmp_path, minilm_path, glue_dir).run_name()
    original = kill_training_at_call(monkeypatch, 3)  # killed in round two
    with pytest.raises(KeyboardInterrupt):
        run_imp(config)
    run_dir = tmp_path / "b" / config.run_name()
    assert not (run_dir / "metrics.json").exists()
    assert (run_dir / "imp" / "imp_state.safetensors").exists()  # an unfinished run keeps its resume state
    monkeypatch.setattr(FineTuner, "train", original)
    resumed = run_imp(config)

    assert [r["metrics"] for r in resumed["trajectory"]] == [r["metrics"] for r in straight["trajectory"]]
    for level in range(3):
        a = Ticket.load(tmp_path / "a" / config.run_name() / "imp" / f"ticket-round{level:02d}.safetensors")
        b = Ticket.load(run_dir / "imp" / f"ticket-round{level:02d}.safetensors")
        assert a.masks.keys() == b.masks.keys() and all((a.masks[k] == b.masks[k]).all() for k in a.masks)
    assert (run_dir / "config.yaml").exists() and (run_dir / "log.txt").exists()
    log = (run_dir / "log.txt").read_text()  # each start logs what its floats depend on beyond the seeds
    assert log.count(f"{config.run_name()} on torch {torch.__version__}") == 2
    assert f"{torch.get_num_threads()} threads" in log
    tickets = [f"ticket-round{level:02d}.safetensors" for level in range(3)]
    assert sorted(os.listdir(run_dir / "imp")) == tickets + ["trajectory.json"]  # keep: tickets
    assert (tmp_path / "a" / config.run_name() / "imp" / "imp_state.safetensors").exists()  # keep: all

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished run trained again")
    monkeypatch.setattr(FineTuner, "train", must_not_train)
    assert run_imp(config)["trajectory"] == resumed["trajectory"]
    assert sorted(os.listdir(run_dir / "imp")) == tickets + ["trajectory.json"]
    final = dataclasses.replace(config, keep="final")  # a finished run kept smaller later: no training either
    for _ in range(2):
        assert run_imp(final)["trajectory"] == resumed["trajectory"]
        assert sorted(os.listdir(run_dir / "imp")) == [tickets[-1], "trajectory.json"]


def test_a_theta_i_run_resumed_from_what_git_carries_ends_as_an_uninterrupted_one(tmp_path, minilm_path, glue_dir,
                                                                                  monkeypatch, caplog):
    """A θi run whose store lost its θi file and its dense round (both too large for git: docs/development.md)
    trains round 0 again up to step i, then goes on bit for bit as a run that was never stopped."""
    straight = run_imp(_config(tmp_path / "a", minilm_path, glue_dir, rewind=0.5))
    config = _config(tmp_path / "b", minilm_path, glue_dir, rewind=0.5)
    original = kill_training_at_call(monkeypatch, 3)  # killed in round two
    with pytest.raises(KeyboardInterrupt):
        run_imp(config)
    run_dir = tmp_path / "b" / config.run_name()
    (run_dir / "imp" / "theta_i.safetensors").unlink()
    for dense in (tmp_path / "b").glob("dense-*"):
        shutil.rmtree(dense)
    monkeypatch.setattr(FineTuner, "train", original)
    with caplog.at_level("WARNING", logger="nni_bert_tickets.core.pruners"):
        resumed = run_imp(config)
    assert "holds no θi: training round 0 again from θ0 up to step 1" in caplog.text
    assert [r["metrics"] for r in resumed["trajectory"]] == [r["metrics"] for r in straight["trajectory"]]
    a = Ticket.load(tmp_path / "a" / config.run_name() / "imp" / "ticket-round02.safetensors")
    b = Ticket.load(run_dir / "imp" / "ticket-round02.safetensors")
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert set(a.weights) == set(b.weights) and all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)


def test_a_finished_theta_i_run_without_its_last_ticket_trains_only_its_last_round_again(tmp_path, minilm_path,
                                                                                         glue_dir, monkeypatch, caplog):
    """A finished θi run carried in git arrives without its last ticket (θi and the last mask, as large as the model)
    and its dense round; it kept the small state from before its last round, so round 0 trains again up to step i
    and the last round once more, to the same ticket and metrics; nothing else trains."""
    config = _config(tmp_path, minilm_path, glue_dir, rewind=0.5, keep="tickets")
    first = run_imp(config)
    imp = tmp_path / config.run_name() / "imp"
    before = Ticket.load(imp / "ticket-round02.safetensors")
    assert sorted(os.listdir(imp)) == ["imp_state-before-last.safetensors", "ticket-round00.safetensors",
                                       "ticket-round01.safetensors", "ticket-round02.safetensors", "trajectory.json"]
    (imp / "ticket-round02.safetensors").unlink()
    for dense in tmp_path.glob("dense-*"):
        shutil.rmtree(dense)
    calls, original = [], FineTuner.train

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(FineTuner, "train", counted)
    with caplog.at_level("WARNING"):
        again = run_imp(config)
    assert "its last ticket (ticket-round02.safetensors, with θi) is gone: training round 2 again" in caplog.text
    assert len(calls) == 2  # round 0 up to step i, then the last round
    assert again["trajectory"] == first["trajectory"]
    after = Ticket.load(imp / "ticket-round02.safetensors")
    assert all(torch.equal(before.masks[k], after.masks[k]) for k in before.masks)
    assert all(torch.equal(before.weights[k], after.weights[k]) for k in before.weights)
    calls.clear()
    assert run_imp(config)["trajectory"] == first["trajectory"] and calls == []  # finished again: nothing trains
    final = dataclasses.replace(config, keep="final")  # kept smaller: the earlier tickets and that state go
    run_imp(final)
    assert sorted(os.listdir(imp)) == ["ticket-round02.safetensors", "trajectory.json"]


def test_bad_paths_fail_before_training(tmp_path, minilm_path, glue_dir, monkeypatch):
    monkeypatch.setattr(FineTuner, "train", lambda *a, **k: pytest.fail("trained despite bad input"))
    with pytest.raises(DataError, match="cannot read"):
        run_imp(_config(tmp_path, minilm_path, str(tmp_path / "no-data")))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        run_imp(_config(tmp_path, str(tmp_path / "no-model"), glue_dir))
    assert list(tmp_path.iterdir()) == []  # no run directory is left behind
    for bad in ({"step": 1.5}, {"batch_size": 0}, {"epochs": -1}, {"keep": "some"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            _config(tmp_path, minilm_path, glue_dir, **bad)
    for experiment in ("table2", "transfer"):  # they read the tickets below the target
        with pytest.raises(ValueError, match="keep: tickets"):
            _config(tmp_path, minilm_path, glue_dir, keep="final", experiment=experiment, transfer_sparsity=0.2)
    _config(tmp_path, minilm_path, glue_dir, keep="final", experiment="table3")  # reads trajectories only


def test_accelerate_launch_with_two_processes(tmp_path, minilm_path, glue_dir):
    """``accelerate launch --cpu --num_processes 2`` runs the same driver to the same kind of result."""
    args = ["--task", "wnli", "--model", minilm_path, "--data-dir", glue_dir, "--max-train-samples", "64",
            "--max-eval-samples", "32", "--batch-size", "8", "--max-steps", "2", "--target-sparsity", "0.1",
            "--checkpoint-steps", "1", "--output-root", str(tmp_path), "--log-level", "WARNING"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    out = subprocess.run(launch + [str(ROOT / "examples" / "glue.py"), *args], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir() and p.name.startswith("imp-")]  # not tables, dense-*
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["trajectory"]) == 2 and 0 <= metrics["trajectory"][1]["metric"] <= 1
    saved = json.loads((tmp_path / "tables" / "imp-wnli.json").read_text())  # once, by the main process
    assert [lv["accuracy"] for lv in saved["imp_trajectory"]] == [r["metric"] for r in metrics["trajectory"]]
    assert "| 1 | 10.0% |" in out.stdout
    assert not list(run_dir.glob("imp/step-checkpoint*"))  # step checkpoints (2 processes) saved, then removed
    (start,) = (run_dir / "environment.jsonl").read_text().splitlines()  # the main process's start, once
    assert "CPU kernels" in json.loads(start)["environment"]


@pytest.mark.parametrize("rewind, kill_at, kept", [(0, 7, 4 + 2), (1, 3, 2)])
def test_kill_mid_round_resumes_from_the_step_checkpoint(rewind, kill_at, kept, tmp_path, minilm_path, glue_dir,
                                                         monkeypatch):
    """A kill inside a round continues from the last Accelerate step checkpoint (not from the round's start),
    replaying the interrupted pass over the data: masks and metrics equal an uninterrupted run's. Rounds take
    4 steps and checkpoints come every 2: step 7 is round 1's third; with θ1 rewinding, step 3 is in round 0,
    after the θ1 snapshot was taken. ``kept``: the steps done when the last checkpoint was saved."""
    minilm_path = tiny_checkpoint(tmp_path / "tiny-bert", minilm_path, positions=128)  # no 6-layer model needed
    original, losses = FineTuner.training_step, {"a": [], "b": []}

    def recording(run, kill_at=None):
        def step(batch, model):
            if len(losses[run]) + 1 == kill_at:
                raise KeyboardInterrupt("simulated kill")
            loss = original(batch, model)
            losses[run].append(loss.item())
            return loss
        return staticmethod(step)
    monkeypatch.setattr(FineTuner, "training_step", recording("a"))
    straight = run_imp(_config(tmp_path / "a", minilm_path, glue_dir, max_steps=4, rewind=rewind, keep="final"))
    config = _config(tmp_path / "b", minilm_path, glue_dir, max_steps=4, rewind=rewind, checkpoint_steps=2)
    assert config.run_name() == _config(tmp_path, minilm_path, glue_dir, max_steps=4, rewind=rewind).run_name()
    imp_dir = tmp_path / "b" / config.run_name() / "imp"
    monkeypatch.setattr(FineTuner, "training_step", recording("b", kill_at))
    with pytest.raises(KeyboardInterrupt):
        run_imp(config)
    assert json.loads((imp_dir / "step-checkpoint" / "progress.json").read_text())["step"] == 2
    if rewind == 0:  # as if killed while swapping a newer checkpoint in: the previous one is still used
        (imp_dir / "step-checkpoint").rename(imp_dir / "step-checkpoint.old")

    assert len(losses["b"]) == kill_at - 1
    del losses["b"][kept:]  # steps after the checkpoint are lost with the kill and trained again
    monkeypatch.setattr(FineTuner, "training_step", recording("b"))
    resumed = run_imp(config)
    assert len(losses["b"]) == len(losses["a"]) == 3 * 4  # resumed at the checkpoint: no step trained twice
    assert losses["b"] == losses["a"]  # every step's loss, bit for bit
    assert not any(p.name.startswith("step-checkpoint") for p in imp_dir.iterdir())  # removed after the round
    assert (imp_dir / "imp_state.safetensors").exists()  # keep: all
    left = sorted(os.listdir(tmp_path / "a" / config.run_name() / "imp"))
    assert left == ["ticket-round02.safetensors", "trajectory.json"]  # keep: final (the straight run)
    assert [r["metrics"] for r in resumed["trajectory"]] == [r["metrics"] for r in straight["trajectory"]]
    a = Ticket.load(tmp_path / "a" / config.run_name() / "imp" / "ticket-round02.safetensors")
    b = Ticket.load(imp_dir / "ticket-round02.safetensors")
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert (a.weights is None) == (rewind == 0) and (b.weights is None) == (rewind == 0)
    assert rewind == 0 or all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)  # the same θ1


def test_learning_rate_decays_to_zero_over_the_steps_actually_trained(tmp_path, minilm_path, glue_dir):
    """compress(max_steps=N) trains N steps per round: the linear decay must end at 0 after N, not after the
    configured epochs (here 3 epochs of 3 batches = 9 steps)."""
    from nni_bert_tickets.experiments.imp_run import prepare
    config = _config(tmp_path, minilm_path, glue_dir, max_steps=None, epochs=3)
    model, tuner = prepare(config)
    assert tuner.num_training_steps() == 9
    optimizer, scheduler = tuner.optimizer_and_scheduler(model)
    tuner.train(model, optimizer, tuner.training_step, scheduler, max_steps=4)
    assert tuner.optimizer_steps == 4 and scheduler.get_last_lr()[0] == 0.0


def test_a_lower_target_reads_the_first_rounds_of_a_finished_longer_run(tmp_path, minilm_path, glue_dir, monkeypatch):
    from nni_bert_tickets.experiments.imp_run import longer_run
    from nni_bert_tickets.experiments.tables import imp_ticket
    longer = run_imp(_config(tmp_path / "a", minilm_path, glue_dir, target_sparsity=0.2))
    fresh = run_imp(_config(tmp_path / "b", minilm_path, glue_dir, target_sparsity=0.1))  # the independent reference
    shorter = _config(tmp_path / "a", minilm_path, glue_dir, target_sparsity=0.1)
    assert shorter.run_name() != longer["run"]
    assert longer_run(dataclasses.replace(shorter, learning_rate=2e-4)) is None  # other settings: not the same run
    assert longer_run(dataclasses.replace(shorter, target_sparsity=0.3)) is None  # past where it stopped

    def must_not_train(*args, **kwargs):
        raise AssertionError("rounds a finished longer run holds were trained again")
    monkeypatch.setattr(FineTuner, "train", must_not_train)
    reused = run_imp(shorter)
    assert reused["run"] == reused["reused_from"] == longer["run"]
    assert [r["metrics"] for r in reused["trajectory"]] == [r["metrics"] for r in fresh["trajectory"]]
    assert [r["target_sparsity"] for r in reused["trajectory"]] == [0.0, 0.1]
    a = imp_ticket(shorter, 0.1)
    b = Ticket.load(tmp_path / "b" / fresh["run"] / "imp" / "ticket-round01.safetensors")
    assert a.masks.keys() == b.masks.keys() and all((a.masks[k] == b.masks[k]).all() for k in a.masks)
    assert not (tmp_path / "a" / shorter.run_name()).exists()  # nothing written for the shorter run


def test_a_round_of_the_main_job_warns_nothing_about_the_lr_scheduler(tmp_path, minilm_path, glue_dir):
    """NNI patches optimizer.step after the LR scheduler is built; the loop's evaluator builds the scheduler again
    after the patch, so torch's "overridden after learning rate scheduler initialization" warning never comes, and
    the learning rate still decays linearly from the configured one within each round."""
    import warnings

    config = _config(tmp_path, minilm_path, glue_dir, target_sparsity=0.1, max_steps=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_imp(config)
        lrs = _lrs_of_one_round(config)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "overridden after learning rate scheduler" in m], messages
    assert lrs == pytest.approx([1e-4, 1e-4 * 2 / 3, 1e-4 / 3])  # linear decay over 3 steps, from the configured LR


def _lrs_of_one_round(config):
    """The LR each optimizer step of one IMP round uses, through the loop's NNI evaluator, patched as IMP does."""
    from nni_bert_tickets.core.round_evaluator import RoundEvaluator
    from nni_bert_tickets.experiments.imp_run import prepare
    model, tuner = prepare(config)
    evaluator = tuner.evaluator(model)
    assert isinstance(evaluator, RoundEvaluator)
    evaluator._init_optimizer_helpers(model)  # what NNI's Pruner does first
    evaluator.bind_model(model)
    seen = []
    evaluator.patch_optimizer_step([lambda: seen.append(evaluator._optimizers[0].param_groups[0]["lr"])], [])
    evaluator.train(max_steps=3)
    evaluator.unbind_model()
    return seen
