"""The examples and the README name only files that exist, and every config they name loads."""
import re
from pathlib import Path

from nni_bert_tickets.experiments.config import load_yaml

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "examples").rglob("*.py")), *sorted((ROOT / "examples").rglob("*.y*ml")),
             *sorted((ROOT / "benchmarks").glob("*.py"))]
FULL = re.compile(r"(?<![\w/.-])(examples/[\w/.-]+\.(?:ya?ml|json|py))")
SHORT = re.compile(r"`((?:smoke|paper|cpu|nni)/[\w.-]+\.yaml)")  # the README's table: relative to examples/configs


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
