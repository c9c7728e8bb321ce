"""Fault injection: `examples/glue.py` killed with SIGKILL at seeded random moments, rerun until it finishes,
gives the masks and metrics of a run that was never killed (round files, step checkpoints, atomic writes)."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from nni_bert_tickets.core.ticket import Ticket

ROOT = Path(__file__).resolve().parents[1]


def _tiny_model(path: Path, minilm_path: str) -> str:
    """A 2-layer BERT with the embedded model's tokenizer, saved as a pre-trained checkpoint (a run is seconds)."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _run(config: Path, env, kill_after=None, watch: Path = None) -> int:
    """Run the driver; SIGKILL it ``kill_after`` seconds after start. ``watch``: record in ``_run.started`` when a
    run directory first appears there (loading done, training begins)."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "glue.py"), "--config", str(config)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if kill_after is None:
        start = time.monotonic()
        while watch is not None and proc.poll() is None and not list(watch.glob("imp-*")):
            time.sleep(0.05)
        _run.started = time.monotonic() - start
        return proc.wait(timeout=600)
    try:
        return proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return -signal.SIGKILL


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path, minilm_path, glue_dir):
    model = _tiny_model(tmp_path / "model", minilm_path)
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
    loading, work = _run.started, duration - _run.started

    # Seeded: the same kill moments (as fractions of the work) every time. At most a fifth of the work per try, so
    # a run killed after faster loading (a warm dataset cache, less load beside it) still dies at least 3 times.
    rng = random.Random(2024)
    kills = 0
    for _ in range(20):  # each try resumes where the last one was killed
        code = _run(tmp_path / "killed.yaml", env, kill_after=loading + rng.uniform(0.0, 0.2) * work)
        if code == 0:
            break
        assert code == -signal.SIGKILL
        kills += 1
    assert kills >= 3, "the kills came too late to interrupt the run"
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
