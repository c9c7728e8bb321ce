"""Settings that would fail hours into a run, or silently do something else, are refused before anything runs;
every unit of work is named by its settings alone."""
import dataclasses

import pytest

from nni_bert_tickets.experiments.cli import parse_args
from nni_bert_tickets.experiments.config import ExperimentConfig


@pytest.mark.parametrize("settings, message", [
    (dict(baseline_sparsities=[0.25]), "not levels of the IMP run"),
    (dict(schedule="geometric", baseline_sparsities=[0.2]), "not levels of the IMP run"),  # 0.19 is, 0.2 is not
    (dict(rewind_points=[-0.1]), "rewind_points"),
    (dict(rewind_points=[5]), "fractions of training"),
    (dict(experiment="transfer", transfer_sparsity=0.55), "transfer_sparsity 0.55 is not a level"),
    (dict(max_train_samples=0), "max_train_samples must be a positive"),
    (dict(max_eval_samples=-3), "max_eval_samples must be a positive"),
    (dict(baseline_offsets=[1.5]), "baseline_offsets"),
    (dict(baseline_offsets=[0.2], baseline_sparsities=[0.5]), "not both"),
])
def test_silently_wrong_settings_are_refused_with_the_settings_name(settings, message):
    with pytest.raises(ValueError, match=message) as err:
        ExperimentConfig(**settings).validate()
    assert "e.g." in str(err.value) or "not both" in message


def test_valid_experiment_settings_pass():
    ExperimentConfig(schedule="geometric", target_sparsity=0.3, baseline_sparsities=[0.19, 0.3]).validate()
    ExperimentConfig(experiment="transfer", target_sparsity=0.7, transfer_sparsity=0.5).validate()
    ExperimentConfig(rewind_points=[0, 0.05], baseline_offsets=[0, 0.2], max_train_samples=10).validate()


def test_the_cli_refuses_a_bad_setting_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="rewind_points"):
        parse_args(["--task", "rte", "--rewind-points", "5", "--output-root", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_run_names_come_from_the_settings_alone(tmp_path):
    base = ExperimentConfig(task="rte")
    assert "name" not in {f.name for f in dataclasses.fields(ExperimentConfig)}  # no hand-set name to share
    variants = [dataclasses.replace(base, task="mrpc"), dataclasses.replace(base, model="other"),
                dataclasses.replace(base, prune_pooler=False), dataclasses.replace(base, rewind=0.1),
                dataclasses.replace(base, rewind=None)]
    names = {base.run_name(), *(v.run_name() for v in variants)}
    assert len(names) == 1 + len(variants)
    assert base.run_name().startswith("imp-rte-")
    # settings that choose tables, or where output goes, do not rename the IMP run
    assert dataclasses.replace(base, seeds=5, output_root="x", baselines=[]).run_name() == base.run_name()
    (tmp_path / "named.yaml").write_text("task: rte\nname: mine\n")
    with pytest.raises(ValueError, match="unknown setting"):
        parse_args(["--config", str(tmp_path / "named.yaml")])


@pytest.mark.parametrize("overrides, message", [
    ("{sst2: {max_train_samples: 0}}", r"task_overrides\[sst2\]: max_train_samples must be a positive"),
    ("{sst2: {target_sparsity: 0.5}}", r"task_overrides\[sst2\]: \['target_sparsity'\] are not training settings"),
    ("{sst2: 5000}", "task_overrides maps tasks to settings"),
    ("{nosuchtask: {epochs: 1}}", "unknown task 'nosuchtask'"),
])
def test_bad_task_overrides_are_refused_naming_the_task(overrides, message):
    with pytest.raises(Exception, match=message):
        parse_args(["--experiment", "transfer", "--target-sparsity", "0.7", "--task-overrides", overrides])
    with pytest.raises(ValueError, match="transfer experiment only"):  # elsewhere it would be ignored: refused
        parse_args(["--task-overrides", "{sst2: {epochs: 1}}"])


def test_the_shipped_transfer_config_reuses_each_tasks_table2_runs():
    """examples/configs/cpu/transfer.yaml gives every target task the settings of its own Table 2 config (SST-2
    subsampled through task_overrides), so the IMP runs and full-model runs it reads are the ones Table 2 made."""
    from pathlib import Path
    from nni_bert_tickets.experiments.config import load_yaml
    cpu = Path(__file__).resolve().parents[1] / "examples" / "configs" / "cpu"
    transfer = parse_args(["--config", str(cpu / "transfer.yaml")])
    for task in transfer.transfer_tasks:
        own = ExperimentConfig(**load_yaml(str(cpu / f"table2-{task}.yaml")))
        assert transfer.for_task(task).run_name() == own.run_name(), task
        assert transfer.for_task(task).training_settings() == own.training_settings(), task
    assert transfer.for_task("sst2").max_train_samples == 5000 and transfer.for_task("rte").max_train_samples is None


def test_the_shipped_figure4_config_and_its_theta0_twin_reuse_table2(tmp_path):
    """examples/configs/cpu/transfer-rewind.yaml (Figure 4) trains its targets as Table 2 did; run as its comment
    says with --rewind 0, its θ0 sources are Table 2's IMP runs (a shorter run reads the longer one's rounds)."""
    from pathlib import Path
    from nni_bert_tickets.experiments.config import load_yaml
    cpu = Path(__file__).resolve().parents[1] / "examples" / "configs" / "cpu"
    config = cpu / "transfer-rewind.yaml"
    commands = [line.split("--config ", 1)[1].split()[1:] for line in config.read_text().splitlines()
                if line.startswith("#") and "--config" in line]
    assert commands == [[], ["--rewind", "0"]]
    rewound, theta0 = (parse_args(["--config", str(config), *extra]) for extra in commands)
    assert rewound.rewind == 0.05 and theta0.rewind == 0
    for task in rewound.transfer_tasks:
        own = ExperimentConfig(**load_yaml(str(cpu / f"table2-{task}.yaml")))
        for made in (rewound, theta0):
            assert made.for_task(task).training_settings() == own.training_settings(), task
        # all the θ0 source's settings but where it stops: its first rounds are Table 2's run's
        assert {k: v for k, v in own.hashed().items() if k != "target_sparsity"} == \
            {k: v for k, v in theta0.for_task(task).hashed().items() if k != "target_sparsity"}, task


def test_help_describes_every_flag(capsys):
    """`--help` gives every setting a description (carried once, by the dataclass field) and its default."""
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    shown = capsys.readouterr().out
    for f in dataclasses.fields(ExperimentConfig):
        assert f.metadata.get("help"), f"{f.name} has no help"
        assert "--" + f.name.replace("_", "-") in shown
    flat = " ".join(shown.split())
    assert "dense_grid: the learning rates of the grid (default: 0.0001 3e-05)" in flat
    assert "none = standard pruning (no rewind) (default: 0)" in flat


def test_choices_have_one_home():
    """Choices live in the field metadata; validate refuses other values, and the baseline names are the
    strategies tables.py registers."""
    from nni_bert_tickets.experiments.config import BASELINE_NAMES
    from nni_bert_tickets.experiments.tables import BASELINES
    assert set(BASELINE_NAMES) == set(BASELINES)
    with pytest.raises(ValueError, match="keep must be one of"):
        ExperimentConfig(keep="some").validate()
    with pytest.raises(ValueError, match="unknown baselines"):
        ExperimentConfig(baselines=["random_pruning", "nope"]).validate()


def test_training_defaults_come_from_the_training_loop():
    from nni_bert_tickets.training import TrainConfig
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert ExperimentConfig().train_config() == TrainConfig()
    assert names - {"adam_epsilon"} <= {f.name for f in dataclasses.fields(ExperimentConfig)}


def test_rewind_is_parsed_once():
    from nni_bert_tickets.core.rewind import Rewind
    assert ExperimentConfig(rewind=100.0).rewind == 100 and isinstance(ExperimentConfig(rewind=100.0).rewind, int)
    assert Rewind.parse("none").standard and Rewind.parse("0").to_theta0 and Rewind.parse(0.05).step(200) == 10
    assert Rewind.parse("7").step(None) == 7 and Rewind.parse(0.05).name == "theta_i:0.05"
    for bad in (1.5, -1, True, "soon"):
        with pytest.raises(ValueError, match="rewind"):
            Rewind.parse(bad)
    with pytest.raises(ValueError, match="rewind"):
        ExperimentConfig(rewind=1.5).validate()
