"""The tickets shipped in ``tickets/all-MiniLM-L6-v2/``: each loads offline from its folder, fits the embedded model
(its base-weight fingerprint), has the sparsity its card states, and its card carries the numbers of the committed
result file it was published from (``docs/results/cpu/tables/``), not numbers typed by hand."""
import json
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification

from conftest import MINILM
from nni_bert_tickets import Ticket
from nni_bert_tickets.core.hub import read_card

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "tickets" / "all-MiniLM-L6-v2"
TABLES = ROOT / "docs" / "results" / "cpu" / "tables"
FOLDERS = sorted(p for p in PUBLISHED.glob("*") if p.is_dir())


def test_the_repository_ships_published_tickets_and_an_index_naming_each():
    assert FOLDERS, f"no ticket folder under {PUBLISHED}"
    index = (PUBLISHED / "README.md").read_text()
    for folder in FOLDERS:
        assert f"{folder.name}" in index, f"{folder.name} missing from the index"


@pytest.mark.parametrize("folder", FOLDERS, ids=[p.name for p in FOLDERS])
def test_a_published_ticket_loads_offline_fits_the_embedded_model_and_matches_its_result_file(folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ticket = Ticket.from_pretrained(str(folder))
    facts = read_card(folder / "README.md")["ticket"]
    task, percent = folder.name.rsplit("-", 1)
    assert ticket.task == task == facts["task"]
    assert abs(ticket.sparsity - int(percent) / 100) < 0.005
    assert ticket.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert (folder / "ticket.safetensors").stat().st_size < 2 * 2 ** 20  # packed bits, no weights for a θ0 ticket

    result = json.loads((TABLES / f"table2-{task}.json").read_text())
    row = next(r for r in result["rows"] if abs(r["sparsity"] - ticket.sparsity) < 0.005)
    assert result["highest_winning_sparsity"] == pytest.approx(row["sparsity"])
    assert facts["value"] == pytest.approx(row["imp"]) and facts["metric"] == result["metric"]
    assert facts["full_model"]["mean"] == pytest.approx(result["full"]["mean"])

    num_labels = 1 if task == "stsb" else 2
    model = AutoModelForSequenceClassification.from_pretrained(str(MINILM), num_labels=num_labels)
    with ticket.apply(model) as applied:  # refuses a model whose weights are not the ticket's θ0 (its fingerprint)
        assert applied.sparsity == pytest.approx(ticket.sparsity, abs=1e-6)
        for name, param in applied.params.items():
            assert not param.detach()[~applied.masks[name]].any(), f"{name}: a pruned weight is not zero"
