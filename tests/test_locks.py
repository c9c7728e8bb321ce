"""One writer per unit: two real processes on one unit do the work once and get the same result; a lock left by a
killed process does not block; a process finding a unit busy does the free ones first."""
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_checkpoint
from nni_bert_tickets.core.locks import HOLDER_FILE, LOCK_FILE, free_first
from nni_bert_tickets.core.naming import unit_name
from nni_bert_tickets.core.seeding import ENVIRONMENT_FILE
from nni_bert_tickets.experiments.tables import cached

ROOT = Path(__file__).resolve().parents[1]
# A driver that records each training call (and, for the first process, holds its first one until told to go).
DRIVER = """
import os, sys, time
from nni_bert_tickets.training.loop import FineTuner
original = FineTuner.train
def counted(self, *args, **kwargs):
    with open(os.environ["TRAIN_LOG"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    go = os.environ.get("GO_FILE")
    while go and not os.path.exists(go):
        time.sleep(0.05)
    return original(self, *args, **kwargs)
FineTuner.train = counted
from nni_bert_tickets.experiments.cli import main
main(sys.argv[1:])
"""


def _env(tmp_path, **extra):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "TRAIN_LOG": str(tmp_path / "train.log"), **extra}


def _wait_for(condition, what, timeout=300):
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)


def _two_drivers(tmp_path, minilm_path, glue_dir, settings, held, second_ready, what):
    """Run two driver processes on one tiny wnli config (``settings`` added): the first holds its first training
    until the second, started once ``held`` (a unit glob) is locked, meets ``second_ready(b)``. Returns
    ``(a, b, out_a, out_b)`` after both exit with 0."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(dict(
        task="wnli", model=tiny_checkpoint(tmp_path / "model", minilm_path), data_dir=glue_dir, max_train_samples=32,
        max_eval_samples=16, max_length=48, batch_size=8, epochs=1, learning_rate=1e-3, target_sparsity=0.2,
        step=0.1, seed=5, log_level="INFO", output_root=str(tmp_path / "runs"), **settings)))
    (tmp_path / "driver.py").write_text(DRIVER)
    go = tmp_path / "go"
    command = [sys.executable, str(tmp_path / "driver.py"), "--config", str(config)]
    with open(tmp_path / "a.err", "w") as a_err, open(tmp_path / "b.err", "w") as b_err:
        a = subprocess.Popen(command, cwd=ROOT, env=_env(tmp_path, GO_FILE=str(go)), stdout=subprocess.PIPE,
                             stderr=a_err, text=True)
        _wait_for(lambda: list((tmp_path / "runs").glob(f"{held}/{HOLDER_FILE}")), "the first process's lock")
        b = subprocess.Popen(command, cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=b_err, text=True)
        _wait_for(lambda: second_ready(b) or b.poll() is not None, what)
        go.write_text("")
        out_a, _ = a.communicate(timeout=600)
        out_b, _ = b.communicate(timeout=600)
    assert (a.returncode, b.returncode) == (0, 0), (tmp_path / "a.err").read_text()[-3000:] + \
        (tmp_path / "b.err").read_text()[-3000:]
    return a, b, out_a, out_b


def test_two_processes_on_one_imp_run_train_it_once_and_both_get_its_results(tmp_path, minilm_path, glue_dir):
    a, b, out_a, out_b = _two_drivers(tmp_path, minilm_path, glue_dir, {}, "imp-wnli-*",
                                      lambda b: "waiting for it" in (tmp_path / "b.err").read_text(),
                                      "the second process to wait")
    waited = (tmp_path / "b.err").read_text()
    assert f"is being worked on by pid {a.pid} on " in waited and "finished by another process" in waited
    trained = (tmp_path / "train.log").read_text().split()
    assert set(trained) == {str(a.pid)} and len(trained) == 3  # three rounds (0, 10, 20 %), all by the first
    table_a, table_b = (out.split("IMP tickets for wnli")[1] for out in (out_a, out_b))
    assert table_a == table_b and "| 2 | 20.0% |" in table_a
    (run_dir,) = (tmp_path / "runs").glob("imp-wnli-*")
    assert not (run_dir / HOLDER_FILE).exists()  # released


HOLD = """
import sys, time
from pathlib import Path
from nni_bert_tickets.core.locks import unit_lock
with unit_lock(Path(sys.argv[1])):
    Path(sys.argv[2]).write_text("held")
    time.sleep(600)
"""


def test_a_lock_left_by_a_killed_process_does_not_block_and_units_are_computed_once(tmp_path, caplog):
    settings = {"x": 1}
    unit = tmp_path / "runs"
    calls = []
    first = cached(unit, "toy", settings, lambda run_dir: calls.append(run_dir) or {"value": 42})
    (run_dir,) = calls
    assert first == {"value": 42} and (run_dir / LOCK_FILE).exists()
    assert cached(unit, "toy", settings, lambda run_dir: calls.append(run_dir) or {"value": 0}) == first
    assert len(calls) == 1

    other = {"x": 2}
    held = tmp_path / "held"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), str(held)],
                            env=_env(tmp_path))
    _wait_for(held.exists, "the lock holder")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((run_dir / HOLDER_FILE).read_text())["pid"] == proc.pid  # left behind by the killed process
    (run_dir / "result.json").unlink()  # as if the killed process had been computing it
    with caplog.at_level(logging.INFO, logger="nni_bert_tickets.core.locks"):
        start = time.monotonic()
        again = cached(unit, "toy", settings, lambda run_dir: calls.append(run_dir) or {"value": 43})
    assert again == {"value": 43} and len(calls) == 2 and time.monotonic() - start < 5
    assert not [r for r in caplog.records if "waiting" in r.getMessage()]
    assert not (run_dir / HOLDER_FILE).exists()
    assert cached(unit, "toy", other, lambda run_dir: {"value": 7}) == {"value": 7}
    # each start that computed the unit (not the read-backs) left its kernels and versions beside the result
    starts = [json.loads(line) for line in (run_dir / ENVIRONMENT_FILE).read_text().splitlines()]
    assert len(starts) == 2 and all(s["started"] and f"CPU kernels {torch.backends.cpu.get_cpu_capability()}, "
                                    f"{torch.get_num_threads()} threads" in s["environment"] for s in starts)


CACHED = """
import json, os, sys, time
from pathlib import Path
from nni_bert_tickets.experiments.tables import cached
def compute(run_dir):
    with open(os.environ["TRAIN_LOG"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.05)
    return {"value": os.getpid()}
print(json.dumps(cached(Path(sys.argv[1]), "toy", {"x": 1}, compute)))
"""


def test_two_processes_on_one_cached_unit_compute_it_once(tmp_path):
    go = tmp_path / "go"
    command = [sys.executable, "-c", "import logging; logging.basicConfig(level='INFO')\n" + CACHED,
               str(tmp_path / "runs"), str(go)]
    with open(tmp_path / "b.err", "w") as b_err:
        a = subprocess.Popen(command, env=_env(tmp_path), stdout=subprocess.PIPE, text=True)
        _wait_for(lambda: list((tmp_path / "runs").glob(f"toy-*/{HOLDER_FILE}")), "the first process's lock")
        b = subprocess.Popen(command, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=b_err, text=True)
        _wait_for(lambda: "waiting for it" in (tmp_path / "b.err").read_text() or b.poll() is not None,
                  "the second process to wait")
        go.write_text("")
        results = [json.loads(p.communicate(timeout=300)[0]) for p in (a, b)]
    assert results == [{"value": a.pid}] * 2
    assert (tmp_path / "train.log").read_text().split() == [str(a.pid)]
    assert f"pid {a.pid}" in (tmp_path / "b.err").read_text()


HOLD_UNTIL = """
import os, sys, time
from pathlib import Path
from nni_bert_tickets.core.locks import unit_lock
with unit_lock(Path(sys.argv[1])):
    Path(sys.argv[2]).write_text("held")
    start = time.monotonic()
    while not os.path.exists(sys.argv[3]) and time.monotonic() - start < float(sys.argv[4]):
        time.sleep(0.05)
"""


class _InStep:  # two Accelerate processes in step; this is the main one
    num_processes, is_main_process, trackers = 2, True, []

    def wait_for_everyone(self):
        pass


def _held(tmp_path, item, seconds):
    """Another process holding toy unit ``item`` until ``release`` appears or ``seconds`` pass."""
    held, release = tmp_path / f"held-{item}", tmp_path / f"release-{item}"
    run_dir = tmp_path / "runs" / unit_name("toy", {"x": item})
    proc = subprocess.Popen([sys.executable, "-c", HOLD_UNTIL, str(run_dir), str(held), str(release), str(seconds)],
                            env=_env(tmp_path))
    _wait_for(held.exists, "the lock holder")
    return proc, release


@pytest.mark.parametrize("accelerator", [None, _InStep()], ids=["one process", "processes in step"])
def test_a_busy_unit_is_put_off_until_the_free_ones_are_done(tmp_path, caplog, accelerator):
    proc, release = _held(tmp_path, "b", seconds=300 if accelerator is None else 2)
    order = []

    def compute(item):
        def run(run_dir):
            order.append(item)
            if item == "c":
                release.write_text("")  # the other process finishes b once c is done
            return {"value": item * 2}
        return run

    def work(item):
        return cached(tmp_path / "runs", "toy", {"x": item}, compute(item), accelerator)["value"]
    with caplog.at_level(logging.INFO, logger="nni_bert_tickets.core.locks"):
        results = free_first(["a", "b", "c"], work)
    proc.wait(timeout=60)
    assert results == ["aa", "bb", "cc"]  # in the items' order, whatever order they ran in
    said = caplog.text
    if accelerator is None:
        assert order == ["a", "c", "b"]
        assert f"pid {proc.pid}" in said and "going on to the next unit and coming back to it" in said
    else:  # a process in step with others cannot leave a unit alone: it waits, in order
        assert order == ["a", "b", "c"] and "waiting for it" in said and "going on" not in said
    assert free_first(["b"], work) == ["bb"] and order.count("b") == 1  # stored once computed


def test_free_first_puts_off_an_item_whose_inner_unit_is_busy_and_restores_waiting(tmp_path):
    proc, release = _held(tmp_path, "inner", seconds=300)
    done = []

    def work(item):
        if item == "outer":  # needs a busy unit before its own
            cached(tmp_path / "runs", "toy", {"x": "inner"}, lambda run_dir: {"value": "inner"})
        done.append(item)
        if item == "last":
            release.write_text("")
        return item
    assert free_first(["outer", "last"], work) == ["outer", "last"] and done == ["last", "outer"]
    proc.wait(timeout=60)
    _, release = _held(tmp_path, "later", seconds=1)  # outside free_first a busy unit is waited for, as before
    assert cached(tmp_path / "runs", "toy", {"x": "later"}, lambda run_dir: {"value": 1}) == {"value": 1}


def test_two_processes_on_one_table_split_its_independent_units(tmp_path, minilm_path, glue_dir):
    """What users run: two launches of one Table-2 config. While the first holds the full model's first seed,
    the second trains the next seed instead of waiting; no unit is trained twice, and both give the same table."""
    a, b, out_a, out_b = _two_drivers(
        tmp_path, minilm_path, glue_dir,
        dict(experiment="table2", seeds=2, baselines=["random_pruning", "random_reinit"], baseline_offsets=[0]),
        "full-wnli-*", lambda b: len(list((tmp_path / "runs").glob("full-wnli-*/result.json"))) == 1,
        "the second process to train the other seed")
    assert "going on to the next unit and coming back to it" in (tmp_path / "b.err").read_text()
    full_by = {json.loads((d / "settings.json").read_text())["seed"]: d for d in (tmp_path / "runs").glob("full-wnli-*")}
    assert sorted(full_by) == [5, 6]
    trained = (tmp_path / "train.log").read_text().split()
    # each trained once, by either process: 2 full-model seeds, 3 IMP rounds (0, 10, 20 %), the 2 levels retrained
    # from θ0 with a fresh head (the default head), 2 baselines at one level
    units = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(trained) == 9 and set(trained) == {str(a.pid), str(b.pid)}, (trained, units)
    assert out_a == out_b and "highest_winning_sparsity" in out_a, (out_a, out_b)
    table = json.loads((tmp_path / "runs" / "tables" / "table2-wnli.json").read_text())
    assert table["full"]["n"] == 2 and [r["sparsity"] for r in table["rows"]] == [0.1, 0.2]
    assert [kind for r in table["rows"] for kind in ("random_pruning", "random_reinit") if kind in r] == \
        ["random_pruning", "random_reinit"]  # at the one baseline level, each from its stored unit
