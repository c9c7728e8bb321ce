"""An NNI trial in-process, NNI's trial channel replaced by a recorder; the guard's rule for ending a sweep."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nni.runtime.trial_command_channel as channels
import nni.trial
import pytest

from conftest import kill_training_at_call
from nni.runtime.trial_command_channel import TrialCommandChannel, set_default_trial_command_channel

from nni_bert_tickets.experiments import cli
from nni_bert_tickets.experiments import nni_trial
from nni_bert_tickets.training import FineTuner

ROOT = Path(__file__).resolve().parents[1]


class Recorder(TrialCommandChannel):
    def __init__(self, parameters):
        self.parameters, self.metrics = parameters, []

    def receive_parameter(self):
        return {"parameter_id": 0, "parameter_source": "algorithm", "parameters": self.parameters,
                "parameter_index": 0}

    def send_metric(self, type, parameter_id, trial_job_id, sequence, value):  # noqa: A002 (NNI's name)
        self.metrics.append((type, json.loads(value) if isinstance(value, str) else value))


@pytest.fixture
def trial(monkeypatch):
    """Runs examples/glue.py's driver as NNI trials; returns (intermediate, final) results per call."""
    monkeypatch.setattr(nni.trial, "_experiment_id", "test-experiment")
    monkeypatch.setattr(nni.trial, "_trial_id", "test-trial")
    monkeypatch.setattr(nni.trial, "_intermediate_seq", 0)

    def run(argv, parameters):
        channel = Recorder(parameters)
        set_default_trial_command_channel(channel)
        cli.main(argv)
        rounds = [m for kind, m in channel.metrics if kind == "PERIODICAL"]
        finals = [m for kind, m in channel.metrics if kind == "FINAL"]
        return rounds, finals
    yield run
    channels._channel = None  # the next user gets NNI's default channel again


def _argv(tmp_path, minilm_path, glue_dir, **extra):
    settings = {"task": "rte", "model": minilm_path, "data_dir": glue_dir, "max_train_samples": 32,
                "max_eval_samples": 16, "max_length": 32, "batch_size": 16, "max_steps": 1, "target_sparsity": 0.2,
                "output_root": str(tmp_path / "runs"), "log_level": "WARNING", **extra}
    return [a for k, v in settings.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def test_every_round_is_reported_once_and_in_order_fresh_resumed_or_finished(tmp_path, minilm_path, glue_dir,
                                                                             trial, monkeypatch):
    argv, original = _argv(tmp_path, minilm_path, glue_dir), FineTuner.train
    rounds, (final,) = trial(argv, {"seed": 5})
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert [round(r["sparsity"], 3) for r in rounds] == [0.0, 0.1, 0.2]
    assert final["default"] == rounds[-1]["default"] and final["full_model"] == rounds[0]["default"]
    (run_dir,) = (tmp_path / "runs").glob("imp-*")  # beside it: the shared dense round
    assert "seed: 5\n" in (run_dir / "config.yaml").read_text()  # the tuner's parameter reached the run

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished run trained again")
    monkeypatch.setattr(FineTuner, "train", must_not_train)
    monkeypatch.setattr(nni.trial, "_trial_id", "later-trial")  # a later sweep's trial, the same setting:
    again, (final_again,) = trial(argv, {"seed": 5})               # nothing trains, every round is reported
    assert again == rounds and final_again == final

    monkeypatch.setattr(FineTuner, "train", original)
    kill_training_at_call(monkeypatch, 3)  # killed in round two
    with pytest.raises(KeyboardInterrupt):
        trial(argv, {"seed": 6})
    monkeypatch.setattr(FineTuner, "train", original)
    resumed, (final_resumed,) = trial(argv, {"seed": 6})  # the same trial resumed: round 2 trained and reported;
    assert [r["round"] for r in resumed] == [2]          # rounds 0 and 1 were reported before the kill
    assert final_resumed["default"] == resumed[-1]["default"]
    monkeypatch.setattr(nni.trial, "_trial_id", "third-trial")  # another trial reading the finished run back
    assert [r["round"] for r in trial(argv, {"seed": 6})[0]] == [0, 1, 2]


def test_a_trial_with_a_lower_target_reports_the_rounds_it_reads_from_a_finished_longer_run(
        tmp_path, minilm_path, glue_dir, trial, monkeypatch):
    longer, _ = trial(_argv(tmp_path, minilm_path, glue_dir), {"seed": 3})  # target 0.2: rounds 0, 1, 2

    def must_not_train(*args, **kwargs):
        raise AssertionError("rounds a finished longer run holds were trained again")
    monkeypatch.setattr(FineTuner, "train", must_not_train)
    monkeypatch.setattr(nni.trial, "_trial_id", "shorter-trial")
    rounds, (final,) = trial(_argv(tmp_path, minilm_path, glue_dir, target_sparsity=0.1), {"seed": 3})
    assert rounds == longer[:2] and final["default"] == rounds[-1]["default"]
    (run_dir,) = (tmp_path / "runs").glob("imp-*")  # nothing written for the shorter run; its reports are recorded
    assert json.loads((run_dir / nni_trial.REPORTED).read_text())["shorter-trial"] == [0, 1]


def test_output_root_from_the_environment(tmp_path, minilm_path, glue_dir, trial, monkeypatch):
    argv = _argv(tmp_path, minilm_path, glue_dir, target_sparsity=0.1)
    monkeypatch.setenv(nni_trial.OUTPUT_ROOT_ENV, str(tmp_path / "elsewhere"))
    rounds, _ = trial(argv, {"seed": 1})
    assert len(rounds) == 2
    assert [p.name for p in (tmp_path / "elsewhere").iterdir()] and not (tmp_path / "runs").exists()
    monkeypatch.setenv(nni_trial.OUTPUT_ROOT_ENV, " ")
    with pytest.raises(ValueError, match=nni_trial.OUTPUT_ROOT_ENV):
        trial(argv, {"seed": 1})


def test_unknown_search_space_keys_are_refused(tmp_path, minilm_path, glue_dir, trial):
    with pytest.raises(ValueError, match="unknown settings \\['sparsity'\\]"):
        trial(_argv(tmp_path, minilm_path, glue_dir), {"sparsity": 0.5})


def _guard():
    spec = importlib.util.spec_from_file_location("trial_guard", ROOT / "examples" / "nni" / "trial_guard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_guard_ends_a_sweep_only_when_its_trials_fail_at_start():
    guard = _guard()
    first_failed = [{"trialJobId": "a", "status": "FAILED"}, {"trialJobId": "b", "status": "RUNNING"}]
    assert guard.sweep_cannot_start(first_failed, [], "b")  # the second failure, and no result anywhere
    assert not guard.sweep_cannot_start([{"trialJobId": "a", "status": "RUNNING"}], [], "a")  # the first one
    assert not guard.sweep_cannot_start(first_failed, [{"trialJobId": "a", "type": "PERIODICAL"}], "b")
    assert not guard.sweep_cannot_start(first_failed + [{"trialJobId": "c", "status": "SUCCEEDED"}], [], "b")


def test_guard_runs_scripts_and_modules_like_python(tmp_path, monkeypatch):
    guard = _guard()
    script = tmp_path / "script.py"
    script.write_text("import sys, helper\nsys.exit(int(sys.argv[1]) + helper.ADD)\n")
    (tmp_path / "helper.py").write_text("ADD = 1\n")  # found beside the script, as `python SCRIPT` finds it
    monkeypatch.setattr("sys.argv", ["trial_guard.py"])
    monkeypatch.setattr("sys.path", ["examples/nni", *__import__("sys").path])
    assert guard.run([str(script), "4"]) == 5
    assert guard.run([str(tmp_path / "missing.py")]) == 1
    monkeypatch.chdir(tmp_path)
    assert guard.run(["-m", "script", "1"]) == 2  # `-m`: the working directory is on the path
    assert guard.main(["--bogus"]) == 2


def test_trial_sh_outside_nni_takes_python3_from_path_or_the_named_interpreter(tmp_path):
    """No NNI manager among the parents (as on a remote machine): PATH's python3, unless one is named."""
    fake = tmp_path / "bin" / "python3"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "fake python3 $*; $NNI_BERT_TICKETS_TRIAL_PYTHON_SOURCE"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "NNI_BERT_TICKETS_PYTHON"}
    env["PATH"] = f"{fake.parent}{os.pathsep}{env['PATH']}"
    trial_sh = ROOT / "examples" / "nni" / "trial.sh"
    out = subprocess.run(["bash", str(trial_sh), "examples/glue.py", "--x"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == (f"fake python3 {trial_sh.parent}/trial_guard.py examples/glue.py --x; "
                          "python3 on PATH (no NNI manager among this trial's parents)\n")
    named = subprocess.run(["bash", str(trial_sh), "-m", "json.tool", "--help"], capture_output=True, text=True,
                           env={**env, "NNI_BERT_TICKETS_PYTHON": sys.executable})
    assert named.returncode == 0 and "usage: python -m json.tool" in named.stdout, named.stderr
    missing = subprocess.run(["bash", str(trial_sh), "x.py"], capture_output=True, text=True,
                             env={**env, "NNI_BERT_TICKETS_PYTHON": str(tmp_path / "no-python")})
    assert missing.returncode == 127 and "no usable Python interpreter" in missing.stderr
    assert f"NNI_BERT_TICKETS_PYTHON={tmp_path / 'no-python'}" in missing.stderr
