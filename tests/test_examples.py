"""The examples and the docs name only files that exist, every config they name loads, and the Python API example
runs as shipped and as the README shows it."""
import os
import re
import subprocess
import sys
from pathlib import Path

from nni_bert_tickets.experiments.config import load_yaml

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "examples").rglob("*.py")), *sorted((ROOT / "examples").rglob("*.y*ml")),
             *sorted((ROOT / "benchmarks").glob("*.py"))]
FULL = re.compile(r"(?<![\w/.-])(examples/[\w/.-]+\.(?:ya?ml|json|py))")
SHORT = re.compile(r"`((?:smoke|paper|cpu|nni)/[\w.-]+\.yaml)")  # the experiments table (docs/experiments.md): relative to examples/configs


def _references():
    found = set()
    for document in DOCUMENTS:
        text = document.read_text()
        found |= {(document.relative_to(ROOT).as_posix(), ref) for ref in FULL.findall(text)}
        found |= {(document.relative_to(ROOT).as_posix(), f"examples/configs/{ref}") for ref in SHORT.findall(text)}
    return sorted(found)


def test_the_scan_finds_the_references_it_should():
    refs = {ref for _, ref in _references()}
    assert {"examples/configs/smoke/mlm.yaml", "examples/configs/smoke/transfer.yaml",
            "examples/configs/paper/table3.yaml", "examples/nni/sweep_smoke.yml"} <= refs
    assert ("examples/mlm.py", "examples/configs/smoke/transfer.yaml") in _references()


def test_every_named_example_file_exists_and_every_config_loads():
    missing = [f"{document} names {ref}" for document, ref in _references() if not (ROOT / ref).is_file()]
    assert missing == []
    configs = sorted((ROOT / "examples" / "configs").rglob("*.yaml"))
    assert len(configs) > 20
    for path in configs:
        assert load_yaml(str(path)), path  # known settings only


def test_the_readme_shows_the_python_api_example_as_it_is():
    """The README's Python API block is a verbatim excerpt of examples/python_api.py, so it cannot drift."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Python API\n.*?```python\n(.*?)```", readme, re.S).group(1)
    source = [line.strip() for line in (ROOT / "examples" / "python_api.py").read_text().splitlines()]
    lines = [line.strip() for line in block.splitlines() if line.strip()]
    assert len(lines) > 10
    assert [line for line in lines if line not in source] == []


def test_the_python_api_example_runs_as_shipped(tmp_path):
    """examples/python_api.py, offline on the embedded model: a ticket per level, saved, loaded and transferred."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "python_api.py"), "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rounds = re.findall(r"round (\d): sparsity (\d\.\d\d), accuracy (\d\.\d+)", done.stdout)
    assert [(r, s) for r, s, _ in rounds] == [("0", "0.00"), ("1", "0.10"), ("2", "0.20"), ("3", "0.30")]
    assert all(0 <= float(a) <= 1 for _, _, a in rounds)
    assert "transferred to a 3-label model at sparsity 0.30" in done.stdout
    from nni_bert_tickets import Ticket
    ticket = Ticket.load(tmp_path / "sst2-30.safetensors")
    assert abs(ticket.sparsity - 0.3) < 1e-3 and ticket.task == "sst2"
