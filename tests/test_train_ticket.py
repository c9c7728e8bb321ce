"""`experiment: ticket`: a given ticket (folder, file) fine-tuned from θ0 on its task, as `examples/glue.py` runs it."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_checkpoint
from nni_bert_tickets.experiments.cli import parse_args
from nni_bert_tickets.experiments.config import ExperimentConfig
from nni_bert_tickets.experiments.imp_run import run_imp
from nni_bert_tickets.experiments.report import render
from nni_bert_tickets.experiments.tables import ticket_at
from nni_bert_tickets.experiments.train_ticket import train_ticket

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A tiny IMP run on RTE and its ticket at 20 %, saved as a ticket folder with a card."""
    from conftest import GLUE, MINILM
    minilm_path, glue_dir = str(MINILM), str(GLUE)
    root = tmp_path_factory.mktemp("ticket")
    base = dict(model=tiny_checkpoint(root / "model", minilm_path), data_dir=glue_dir, max_train_samples=32,
                max_eval_samples=32, max_length=48, batch_size=8, max_steps=2, learning_rate=1e-3,
                target_sparsity=0.2, step=0.1, head="rewind", seed=1, log_level="WARNING")
    config = ExperimentConfig(task="rte", output_root=str(root / "search"), **base).validate()
    run = run_imp(config)
    ticket = ticket_at(Path(config.output_root) / run["run"], 0.2)
    ticket.save_pretrained(root / "rte-20", metric="accuracy", value=0.625, full_model=0.6)
    return root, base, ticket


def test_the_driver_trains_a_ticket_folder_over_seeds_and_resumes(published):
    root, base, ticket = published
    yaml_text = "\n".join(f"{k}: {json.dumps(v)}" for k, v in base.items())
    (root / "train.yaml").write_text(yaml_text + f"\ntask: rte\nseeds: 2\noutput_root: {root / 'train'}\n")
    command = [sys.executable, str(ROOT / "examples/glue.py"), "--config", str(root / "train.yaml"),
               "--experiment", "ticket", "--ticket", str(root / "rte-20")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((root / "train" / "tables" / "ticket-rte.json").read_text())
    assert result["runs"]["n"] == 2 and result["sparsity"] == pytest.approx(ticket.sparsity)
    assert result["card"] == {"metric": "accuracy", "value": 0.625, "full_model": {"mean": 0.6}}
    units = sorted(p.name for p in (root / "train").iterdir() if p.name.startswith("ticket-rte-"))
    assert len(units) == 2  # one cached training per seed
    assert "its card says 0.625" in done.stdout
    # a second invocation reads the cached trainings back: the same runs, no new unit
    again = train_ticket(parse_args(["--config", str(root / "train.yaml"), "--experiment", "ticket",
                                     "--ticket", str(root / "rte-20")]))
    assert again["runs"] == result["runs"]
    assert sorted(p.name for p in (root / "train").iterdir() if p.name.startswith("ticket-rte-")) == units
    report = render(root / "train").read_text()
    assert "## Tickets trained from θ0" in report and "62.5" in report


def test_a_ticket_file_trains_like_its_folder(published):
    root, base, ticket = published
    config = ExperimentConfig(task="rte", experiment="ticket", ticket=str(root / "rte-20" / "ticket.safetensors"),
                              seeds=1, output_root=str(root / "train"), **base).validate()
    result = train_ticket(config)
    folder = json.loads((root / "train" / "tables" / "ticket-rte.json").read_text())
    assert result["card"] == {} and result["runs"]["runs"][0] == folder["runs"]["runs"][0]  # the same cached unit


@pytest.mark.parametrize("settings, error, message", [
    ({"experiment": "ticket"}, ValueError, "ticket"),
    ({"ticket": "tickets/x"}, ValueError, "experiment: ticket"),
])
def test_ticket_settings_that_disagree_are_refused(settings, error, message, tmp_path):
    with pytest.raises(error, match=message):
        ExperimentConfig(task="rte", output_root=str(tmp_path), **settings).validate()


def test_a_missing_ticket_is_refused_before_any_work(tmp_path, minilm_path, glue_dir):
    config = ExperimentConfig(task="rte", model=minilm_path, data_dir=glue_dir, experiment="ticket",
                              ticket=str(tmp_path / "nowhere" / "rte-20"), output_root=str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train_ticket(config.validate())
    assert not (tmp_path / "out").exists()
