"""Fault injection: `examples/glue.py` killed with SIGKILL or SIGTERM at seeded random moments, rerun until it
finishes, gives the masks and metrics of a run that was never killed (round files, step checkpoints, atomic writes);
a SIGTERM during training saves a step checkpoint on the way out."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_checkpoint
from nni_bert_tickets.core.ticket import Ticket

ROOT = Path(__file__).resolve().parents[1]


def _trained_since(folder: Path, since: float) -> bool:
    """Whether the run under ``folder`` wrote a step checkpoint, a round or a resume state after ``since``."""
    for path in folder.rglob("*"):
        try:
            if (path.suffix == ".safetensors" or path.name == "progress.json") and path.stat().st_mtime > since:
                return True
        except FileNotFoundError:  # a temporary file renamed meanwhile
            pass
    return False


def _run(config: Path, env, kill_after=None, watch: Path = None, sig=signal.SIGKILL) -> int:
    """Run the driver. With ``kill_after``: send it ``sig`` ``kill_after`` seconds after it first writes training
    progress under ``watch`` (so loading, fast or slow, never decides whether a kill lands). Without: record in
    ``_run.started`` when a run directory first appears under ``watch`` (loading done, training begins)."""
    since = time.time()
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "glue.py"), "--config", str(config)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if kill_after is None:
        start = time.monotonic()
        while watch is not None and proc.poll() is None and not list(watch.glob("imp-*")):
            time.sleep(0.05)
        _run.started = time.monotonic() - start
        return proc.wait(timeout=600)
    while proc.poll() is None and not _trained_since(watch, since):
        time.sleep(0.02)
    try:
        return proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(sig)
        proc.wait()
        return -sig


def test_sigkill_and_sigterm_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path, minilm_path, glue_dir):
    model = tiny_checkpoint(tmp_path / "model", minilm_path)
    settings = dict(task="wnli", model=model, data_dir=glue_dir, max_train_samples=64, max_eval_samples=16,
                    max_length=48, batch_size=8, epochs=1, learning_rate=1e-3, target_sparsity=0.4, step=0.1,
                    checkpoint_steps=3, seed=11, log_level="WARNING")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "HF_DATASETS_CACHE": str(tmp_path / "hf-cache")}
    for name in ("straight", "killed"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**settings, "output_root": str(tmp_path / name)}))

    start = time.monotonic()
    assert _run(tmp_path / "straight.yaml", env, watch=tmp_path / "straight") == 0
    duration = time.monotonic() - start
    work = duration - _run.started

    # Seeded: the same kill moments (as fractions of the work, counted from the try's first progress written) every
    # time. At most a fifth of the work per try, so the run dies at least 3 times however fast it loads.
    rng = random.Random(2024)
    kills = 0
    for attempt in range(6):  # each try resumes where the last one was killed; SIGTERM and SIGKILL in turn
        sig = (signal.SIGTERM, signal.SIGKILL)[attempt % 2]
        code = _run(tmp_path / "killed.yaml", env, kill_after=rng.uniform(0.0, 0.2) * work, watch=tmp_path / "killed",
                    sig=sig)
        if code == 0:
            break
        assert code == -sig  # a SIGTERM still ends the process as SIGTERM does (after its step checkpoint)
        kills += 1
    assert kills >= 3, "the kills came too late to interrupt the run"  # up to 3 SIGTERMs and 3 SIGKILLs
    assert _run(tmp_path / "killed.yaml", env) == 0  # to the end (a no-op if the last try finished)

    (straight_dir,) = [p for p in (tmp_path / "straight").iterdir() if p.name.startswith("imp-")]
    killed_dir = tmp_path / "killed" / straight_dir.name  # the same settings: the same run name
    a = json.loads((straight_dir / "metrics.json").read_text())
    b = json.loads((killed_dir / "metrics.json").read_text())
    assert [r["metrics"] for r in a["trajectory"]] == [r["metrics"] for r in b["trajectory"]]
    assert len(a["trajectory"]) == 5
    for level in range(5):
        ta = Ticket.load(straight_dir / "imp" / f"ticket-round{level:02d}.safetensors")
        tb = Ticket.load(killed_dir / "imp" / f"ticket-round{level:02d}.safetensors")
        assert all(torch.equal(ta.masks[k], tb.masks[k]) for k in ta.masks)
    leftovers = [p.name for p in killed_dir.rglob("*") if p.name.startswith((".tmp-", "step-checkpoint"))]
    assert leftovers == []
    shutil.rmtree(tmp_path / "hf-cache", ignore_errors=True)


class _Terminated(Exception):
    pass


@pytest.mark.parametrize("in_time", [True, False])
def test_sigterm_during_training_saves_a_step_checkpoint_on_the_way_out(in_time, tmp_path, minilm_path, glue_dir,
                                                                      monkeypatch):
    """In-process: SIGTERM at step 3 of 6 (checkpoint_steps 100, so no regular checkpoint is due); the handler this
    process had before (raising, instead of ending pytest) runs once the checkpoint is saved; a rerun resumes from
    it to the weights and metrics of a run that was never stopped. Without time to save, none is saved."""
    from accelerate.utils import set_seed
    from nni_bert_tickets.experiments.config import ExperimentConfig
    from nni_bert_tickets.experiments.imp_run import prepare
    from nni_bert_tickets.training import checkpoints
    from nni_bert_tickets.training.loop import FineTuner
    config = ExperimentConfig(task="rte", model=minilm_path, data_dir=glue_dir, max_train_samples=48,
                              max_eval_samples=16, batch_size=8, max_steps=6, learning_rate=1e-4, seed=3,
                              max_length=64, checkpoint_steps=100, output_root=str(tmp_path)).validate()

    def fit(folder):
        model, tuner = prepare(config, None, folder)
        set_seed(config.seed)
        return tuner.fit(model), model
    steps = []
    original = FineTuner.training_step

    def step(batch, model):
        steps.append(1)
        if len(steps) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # noted; the step goes on
        return original(batch, model)
    monkeypatch.setattr(FineTuner, "training_step", staticmethod(step))
    if not in_time:
        monkeypatch.setattr(checkpoints, "TERM_GRACE_S", -1.0)

    def terminated(signum, frame):
        raise _Terminated()
    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        with pytest.raises(_Terminated):
            fit(tmp_path / "stopped")
        assert signal.getsignal(signal.SIGTERM) is terminated  # put back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert len(steps) == 3  # stopped right after the step the signal came in
    folder = tmp_path / "stopped"
    if not in_time:
        assert not folder.exists()
        return
    assert json.loads((folder / "progress.json").read_text())["step"] == 3
    monkeypatch.setattr(FineTuner, "training_step", staticmethod(original))
    straight, straight_model = fit(tmp_path / "straight")
    resumed, resumed_model = fit(folder)
    assert resumed == straight
    a, b = straight_model.state_dict(), resumed_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not folder.exists()  # removed once training ended
