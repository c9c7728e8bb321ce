"""Resuming: a damaged resume file is named with the way out; under NNI each IMP round is reported once."""
import os
import shutil

import pytest

from conftest import tiny_bert, toy_evaluator
from nni_bert_tickets import IMPPruner, bert_config_list


def _pruner(output_dir, rewind=0, kill_in_round=None):
    """IMP on a tiny model to 0.4 in two pruning rounds; ``kill_in_round`` raises KeyboardInterrupt there."""
    model = tiny_bert()
    evaluator = toy_evaluator(model, steps=2)
    train, rounds = evaluator.training_func, []

    def training(*args, **kwargs):
        rounds.append(len(rounds))
        if rounds[-1] == kill_in_round:
            raise KeyboardInterrupt("simulated kill")
        return train(*args, **kwargs)
    evaluator.training_func = training
    pruner = IMPPruner(model, bert_config_list(model, 0.4), evaluator, step=0.2, rewind=rewind,
                       output_dir=str(output_dir))
    return pruner, rounds


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _header_only(path):
    path.write_bytes(path.read_bytes()[:8])


def _garbage(path):
    path.write_bytes(os.urandom(path.stat().st_size))


@pytest.mark.parametrize("damage", [_truncate, _header_only, _garbage], ids=["truncated", "8 bytes", "garbage"])
def test_a_corrupt_resume_state_names_the_file_and_how_to_restart(tmp_path, damage):
    pruner, _ = _pruner(tmp_path / "imp", kill_in_round=2)
    with pytest.raises(KeyboardInterrupt):
        pruner.compress()
    state = tmp_path / "imp" / "imp_state.safetensors"
    damage(state)
    resumed, trained = _pruner(tmp_path / "imp")
    with pytest.raises(ValueError) as error:
        resumed.compress()
    message = str(error.value)
    assert f"{state} is unreadable (truncated or corrupt" in message
    assert f"Delete the folder {tmp_path / 'imp'} (the run's imp/ folder) to restart the run" in message
    assert trained == []  # refused before any training
    shutil.rmtree(tmp_path / "imp")  # the way out works: a fresh run
    fresh, trained = _pruner(tmp_path / "imp")
    fresh.compress()
    assert trained == [0, 1, 2] and len(fresh.trajectory) == 3


def test_a_corrupt_theta_i_snapshot_names_the_file(tmp_path):
    (tmp_path / "imp").mkdir()
    (tmp_path / "imp" / "theta_i.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    pruner, trained = _pruner(tmp_path / "imp", rewind=1)
    with pytest.raises(ValueError, match=r"theta_i.safetensors is unreadable .* Delete the folder"):
        pruner.compress()
    assert trained == []


def test_a_corrupt_ticket_file_names_the_file(tmp_path):
    pruner, _ = _pruner(tmp_path / "imp", kill_in_round=2)
    with pytest.raises(KeyboardInterrupt):
        pruner.compress()
    _garbage(tmp_path / "imp" / "ticket-round01.safetensors")
    resumed, trained = _pruner(tmp_path / "imp")
    with pytest.raises(ValueError, match=r"ticket-round01.safetensors is unreadable .* Delete the folder"):
        resumed.compress()
    assert trained == []


def test_under_nni_a_round_interrupted_after_its_report_is_not_reported_again(tmp_path, minilm_path, glue_dir,
                                                                             monkeypatch):
    """A kill after round 1 was reported but before its state was saved reruns round 1 on resume: the driver
    (cli.main under NNI) reports rounds 0, 1, 2 once each, and the final result once."""
    import json
    import nni
    from nni_bert_tickets.experiments import cli, nni_trial
    reported, finals = [], []
    monkeypatch.setattr(nni_trial, "under_nni", lambda: True)
    monkeypatch.setattr(nni_trial, "with_nni_parameters", lambda config: config)
    monkeypatch.setattr(nni, "report_intermediate_result", lambda metric: reported.append(metric))
    monkeypatch.setattr(nni, "report_final_result", lambda metric: finals.append(metric))
    save, saved = IMPPruner._save, []

    def killed_saving_round_one(self, level):
        saved.append(level)
        if level == 1 and saved.count(1) == 1:
            raise KeyboardInterrupt("simulated kill between the report and the save")
        return save(self, level)
    monkeypatch.setattr(IMPPruner, "_save", killed_saving_round_one)
    argv = ["--task", "wnli", "--model", minilm_path, "--data-dir", glue_dir, "--max-train-samples", "32",
            "--max-eval-samples", "16", "--max-length", "32", "--batch-size", "16", "--max-steps", "1",
            "--target-sparsity", "0.2", "--output-root", str(tmp_path), "--log-level", "WARNING"]
    with pytest.raises(KeyboardInterrupt):
        cli.main(argv)
    assert [r["round"] for r in reported] == [0, 1] and finals == []
    results = cli.main(argv)  # resumed: round 1 is trained again
    assert saved == [0, 1, 1, 2]
    assert [r["round"] for r in reported] == [0, 1, 2]  # each round once
    assert [r["default"] for r in reported] == [r["metric"] for r in results["trajectory"]]
    assert len(finals) == 1 and finals[0]["default"] == results["trajectory"][-1]["metric"]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir() and p.name.startswith("imp-")]  # not dense-*
    assert list(json.loads((run_dir / nni_trial.REPORTED).read_text()).values()) == [[0, 1, 2]]
