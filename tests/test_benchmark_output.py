"""What the benchmarks share (benchmarks/output.py): the command stored beside a result reruns it, and the structured
benchmarks take the same arguments. benchmarks/structured_speed.py as users run it, on a tiny model."""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from output import command, structured_arguments  # noqa: E402


def test_the_stored_command_names_the_script_and_quotes_its_arguments_as_a_shell_reads_them():
    args = ["--task", "mrpc", "--json", "docs/results/a b.json", "--note", "it's"]
    line = command("/anywhere/benchmarks/peers.py", args)
    assert line.startswith("python benchmarks/peers.py ")
    assert shlex.split(line)[2:] == args  # a shell gives the script back exactly these arguments
    assert command(str(ROOT / "benchmarks" / "gpu_cost.py"), []) == "python benchmarks/gpu_cost.py"


def test_the_structured_benchmarks_share_their_arguments():
    import argparse
    parsed = structured_arguments(argparse.ArgumentParser()).parse_args(["--head-sparsity", "0.25"])
    assert (parsed.task, parsed.head_sparsity, parsed.channel_sparsity) == ("sst2", 0.25, 0.5)
    assert parsed.model.endswith("all-MiniLM-L6-v2") and parsed.data_dir.endswith("glue")
    with pytest.raises(SystemExit):
        structured_arguments(argparse.ArgumentParser()).parse_args(["--head-sparsity", "half"])


def test_structured_speed_as_shipped_writes_its_result_with_the_command_that_reruns_it(tmp_path, minilm_path,
                                                                                      glue_dir):
    model = tiny_checkpoint(tmp_path / "tiny-bert", minilm_path, positions=128, hidden=64, intermediate=128)
    out = tmp_path / "speed.json"
    args = ["--task", "sst2", "--model", model, "--data-dir", glue_dir, "--train-samples", "16", "--epochs", "1",
            "--head-sparsity", "0.5", "--channel-sparsity", "0.5", "--step", "0.5", "--json", str(out)]
    done = subprocess.run([sys.executable, "benchmarks/structured_speed.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                                                       "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert shlex.split(result["command"])[2:] == args
    assert (result["head_sparsity"], result["channel_sparsity"]) == (0.5, 0.5)
    assert result["ticket_params"] < result["dense_params"] and result["speedup"] > 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # written atomically, no temporary

