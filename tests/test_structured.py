"""Structured tickets: physical removal equals masking, rounds and rewinding, a model that loads alone."""
import copy

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from nni_bert_tickets.structured import StructuredIMP, StructuredTicket, save_structured, structured_ticket_model


@pytest.fixture
def minilm(minilm_path):
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2).eval()


def _inputs():
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(1000, 5000, (3, 12), generator=g),
            "attention_mask": torch.ones(3, 12, dtype=torch.long)}


def test_removed_heads_and_channels_equal_masking_them(minilm):
    heads = [[0, 3, 5], list(range(12)), [1], [2, 4, 6, 8], list(range(6)), [11]]
    channels = [list(range(0, 1536, 2)), list(range(1536)), list(range(100)), [5, 9], list(range(700)), [0]]
    ticket = StructuredTicket(heads=heads, channels=channels, head_size=32)
    small = structured_ticket_model(minilm, ticket, _inputs())
    reference = copy.deepcopy(minilm)
    with torch.no_grad():  # independent reference: a removed head / channel contributes nothing downstream
        for layer, keep_h, keep_c in zip(reference.bert.encoder.layer, heads, channels):
            for h in set(range(12)) - set(keep_h):
                layer.attention.output.dense.weight[:, h * 32:(h + 1) * 32] = 0
            layer.output.dense.weight[:, sorted(set(range(1536)) - set(keep_c))] = 0
    assert torch.allclose(small(**_inputs()).logits, reference(**_inputs()).logits, atol=1e-5)
    shapes = [(l.attention.self.query.out_features, l.intermediate.dense.out_features) for l in small.bert.encoder.layer]
    assert shapes == [(32 * len(h), len(c)) for h, c in zip(heads, channels)]
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in minilm.parameters())


def test_structured_imp_rounds_rewind_and_saved_model_loads_with_transformers_alone(minilm, tmp_path):
    seen = []

    def fit(model):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        with torch.no_grad():  # "training": perturb every weight so rewinding is observable
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        return {"default": float(len(seen))}
    imp = StructuredIMP(minilm, fit, _inputs(), head_sparsity=0.5, channel_sparsity=0.25, step=0.25)
    small = imp.run()
    assert [r["round"] for r in imp.trajectory] == [0, 1, 2]
    assert imp.ticket.head_sparsity == 0.5 and imp.ticket.channel_sparsity == pytest.approx(0.25, abs=1e-3)
    assert all(len(h) >= 1 for h in imp.ticket.heads)
    # round 2 starts from θ0 restricted to the survivors (bitwise), with the head trained so far
    start = seen[2]
    expected = structured_ticket_model(minilm, imp.ticket, _inputs()).state_dict()
    assert torch.equal(start["bert.embeddings.word_embeddings.weight"], expected["bert.embeddings.word_embeddings.weight"])
    assert torch.equal(start["bert.encoder.layer.0.attention.self.query.weight"],
                       expected["bert.encoder.layer.0.attention.self.query.weight"])
    assert not torch.equal(start["classifier.weight"], minilm.state_dict()["classifier.weight"])
    save_structured(small, imp.ticket, str(tmp_path))
    loaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path), trust_remote_code=True).eval()
    assert type(loaded).__name__ == "PrunedBertForSequenceClassification"
    assert torch.allclose(loaded(**_inputs()).logits, small.eval()(**_inputs()).logits, atol=1e-6)
