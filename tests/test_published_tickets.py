"""The tickets shipped in ``tickets/all-MiniLM-L6-v2/``: each loads offline from its folder, fits the embedded model
(its base-weight fingerprint), has the sparsity its card states, and its card carries the numbers of the committed
result file it was published from (``docs/results/cpu/tables/``), not numbers typed by hand."""
import json
from pathlib import Path

import pytest
from transformers import AutoModelForMaskedLM, AutoModelForQuestionAnswering, AutoModelForSequenceClassification

from conftest import MINILM
from nni_bert_tickets import Ticket
from nni_bert_tickets.core.hub import read_card
from nni_bert_tickets.tasks.data import load_pretrained_body

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

    if (TABLES / f"table2-{task}.json").exists():
        result = json.loads((TABLES / f"table2-{task}.json").read_text())
        row = next(r for r in result["rows"] if abs(r["sparsity"] - ticket.sparsity) < 0.005)
        assert result["highest_winning_sparsity"] == pytest.approx(row["sparsity"])
        value, full = row["imp"], result["full"]["mean"]
    else:  # an IMP-only result (MLM): one run, the highest level at or above the dense round's value
        result = json.loads((TABLES / f"imp-{task}.json").read_text())
        levels = {round(r["sparsity"], 6): r[result["metric"]] for r in result["imp_trajectory"]}
        full = levels.pop(0.0)
        value = levels[round(ticket.sparsity, 2)]
        assert max(s for s, v in levels.items() if v >= full) == pytest.approx(ticket.sparsity, abs=0.005)
    assert facts["value"] == pytest.approx(value) and facts["metric"] == result["metric"]
    assert facts["full_model"]["mean"] == pytest.approx(full)
    if result.get("theta0"):  # θ0 beyond the checkpoint (MLM's warmed head): the card says the file lacks it
        assert facts["theta0"] == result["theta0"] and "not in the ticket file" in (folder / "README.md").read_text()

    auto, labels = {"mlm": (AutoModelForMaskedLM, {}), "squad": (AutoModelForQuestionAnswering, {})}.get(
        task, (AutoModelForSequenceClassification, {"num_labels": 1 if task == "stsb" else 2}))
    model = load_pretrained_body(auto, str(MINILM), **labels)  # a fresh head: the ticket holds the body's masks
    with ticket.apply(model) as applied:  # refuses a model whose weights are not the ticket's θ0 (its fingerprint)
        assert applied.sparsity == pytest.approx(ticket.sparsity, abs=1e-6)
        for name, param in applied.params.items():
            assert not param.detach()[~applied.masks[name]].any(), f"{name}: a pruned weight is not zero"
