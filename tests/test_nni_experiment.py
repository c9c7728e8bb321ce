"""A real two-trial NNI experiment (nnictl, local training service, loopback) on the embedded model."""
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from conftest import SHARED

ROOT = Path(__file__).resolve().parents[1]
NNICTL = Path(sys.executable).with_name("nnictl")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/nni/{path}", timeout=10) as response:
        return json.loads(response.read())


def test_two_trial_sweep_reports_every_round_and_a_final_result(tmp_path):
    trial = {"experiment": "imp", "task": "wnli", "model": str(SHARED / "models" / "all-MiniLM-L6-v2"),
             "data_dir": str(SHARED / "data" / "glue"), "max_train_samples": 32, "max_eval_samples": 16,
             "max_length": 32, "batch_size": 16, "max_steps": 1, "target_sparsity": 0.1,
             "output_root": str(tmp_path / "runs"), "log_level": "WARNING"}
    (tmp_path / "trial.yaml").write_text(yaml.safe_dump(trial))
    (tmp_path / "space.json").write_text(json.dumps({"seed": {"_type": "choice", "_value": [1, 2]}}))
    experiment = {
        "experimentName": "nni-bert-tickets-test", "searchSpaceFile": "space.json",
        "trialCommand": f"{sys.executable} {ROOT / 'examples' / 'glue.py'} --config {tmp_path / 'trial.yaml'}",
        "trialCodeDirectory": str(ROOT), "experimentWorkingDirectory": str(tmp_path / "nni"),
        "trialConcurrency": 1, "maxTrialNumber": 2, "tuner": {"name": "GridSearch"},
        "trainingService": {"platform": "local"}}
    (tmp_path / "experiment.yml").write_text(yaml.safe_dump(experiment))
    port = _free_port()
    out = subprocess.run([str(NNICTL), "create", "--config", str(tmp_path / "experiment.yml"), "--port", str(port)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout)  # nnictl colours its output
    experiment_id = re.search(r"Experiment ID: (\w+)", plain).group(1)
    try:
        deadline = time.time() + 400
        while _get(port, "check-status")["status"] not in ("DONE", "ERROR", "STOPPED") and time.time() < deadline:
            time.sleep(3)
        assert _get(port, "check-status")["status"] == "DONE"
        trials = _get(port, "trial-jobs")
        assert sorted(t["status"] for t in trials) == ["SUCCEEDED", "SUCCEEDED"]
        metrics = _get(port, "metric-data")
        for t in trials:
            mine = [json.loads(json.loads(m["data"])) | {"type": m["type"]} for m in metrics
                    if m["trialJobId"] == t["trialJobId"]]
            rounds = [m for m in mine if m["type"] == "PERIODICAL"]
            (final,) = [m for m in mine if m["type"] == "FINAL"]
            assert [m["round"] for m in rounds] == [0, 1]  # one intermediate result per IMP round
            assert final["default"] == rounds[-1]["default"] and abs(final["sparsity"] - 0.1) < 1e-3
        # the two seeds are two runs, side by side under the shared output root
        assert len([p for p in (tmp_path / "runs").iterdir() if p.name.startswith("wnli-")]) == 2
    finally:
        stopped = subprocess.run([str(NNICTL), "stop", experiment_id], capture_output=True, text=True, timeout=120)
        assert "success" in (stopped.stdout + stopped.stderr).lower(), stopped.stdout + stopped.stderr
