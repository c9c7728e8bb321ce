"""Small files: packed ticket masks (0.1.0 files still load), an IMP resume state without a copy of θ0 (the base
model's fingerprint checked instead), and what a finished run keeps on disk."""
import dataclasses
import json
import math
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import tiny_bert, toy_evaluator
from nni_bert_tickets import IMPPruner, Ticket, TicketError, bert_config_list, global_magnitude_masks, prunable_weights
from nni_bert_tickets.experiments.config import ExperimentConfig
from nni_bert_tickets.experiments.imp_run import run_imp, tidy_finished
from nni_bert_tickets.core.imp_state import BEFORE_LAST_FILE
from nni_bert_tickets.experiments.tables import imp_ticket

DATA = Path(__file__).resolve().parent / "data"


def _ticket(model, sparsity=0.5, **meta):
    return Ticket.from_model(model, global_magnitude_masks(prunable_weights(model), sparsity), **meta)


def _tensor_bytes(path):
    """Bytes of a safetensors file outside its 8-byte length and JSON header: the tensors' data."""
    raw = Path(path).read_bytes()
    return len(raw) - 8 - struct.unpack("<Q", raw[:8])[0]


def _save_as_0_1_0(ticket, path):
    """What version 0.1.0's Ticket.save wrote: one bool byte per mask entry, format /1."""
    tensors = {f"mask/{k}": m.contiguous() for k, m in ticket.masks.items()}
    tensors.update({f"weight/{k}": w.contiguous() for k, w in (ticket.weights or {}).items()})
    save_file(tensors, str(path), metadata={"format": "nni_bert_tickets.ticket/1",
                                            "meta": json.dumps(ticket.metadata(), sort_keys=True, default=str)})


def test_ticket_masks_are_packed_8_per_byte_and_round_trip_any_shape(tmp_path):
    g = torch.Generator().manual_seed(0)
    masks = {"a.weight": torch.rand(3, 5, generator=g) > 0.5, "b.weight": torch.rand(7, generator=g) > 0.3,
             "c.weight": torch.rand(16, 8, generator=g) > 0.9, "d.weight": torch.ones(1, 1, dtype=torch.bool)}
    Ticket(masks=masks, task="rte").save(tmp_path / "t.safetensors")
    loaded = Ticket.load(tmp_path / "t.safetensors")
    assert all(torch.equal(loaded.masks[k], m) and loaded.masks[k].dtype == torch.bool for k, m in masks.items())
    assert _tensor_bytes(tmp_path / "t.safetensors") == sum(math.ceil(m.numel() / 8) for m in masks.values())
    with safe_open(str(tmp_path / "t.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.uint8}

    model = tiny_bert()  # a real ticket: an eighth of 0.1.0's tensor bytes, same masks and metadata
    ticket = _ticket(model, task="rte", seed=3)
    ticket.save(tmp_path / "now.safetensors")
    _save_as_0_1_0(ticket, tmp_path / "old.safetensors")
    numel = sum(m.numel() for m in ticket.masks.values())
    assert _tensor_bytes(tmp_path / "old.safetensors") == numel
    assert _tensor_bytes(tmp_path / "now.safetensors") == numel // 8
    now, old = Ticket.load(tmp_path / "now.safetensors"), Ticket.load(tmp_path / "old.safetensors")
    assert all(torch.equal(now.masks[k], old.masks[k]) for k in ticket.masks) and now.metadata() == old.metadata()


def test_tickets_written_by_0_1_0_still_load(tmp_path):
    # a file written by version 0.1.0 itself (tiny_bert(), one-shot magnitude at 50 %; see tests/data/README.md)
    path = DATA / "ticket-0.1.0.safetensors"
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        stored = {k[len("mask/"):]: f.get_tensor(k) for k in f.keys()}
    assert header["format"] == "nni_bert_tickets.ticket/1"
    recorded = json.loads(header["meta"])
    loaded = Ticket.load(path)
    assert loaded.masks.keys() == stored.keys() == prunable_weights(tiny_bert()).keys()
    assert all(torch.equal(loaded.masks[k], stored[k]) for k in stored)
    assert loaded.sparsity == pytest.approx(recorded["sparsity"]) and loaded.layer_sparsity == recorded["layer_sparsity"]
    assert (loaded.version, loaded.task, loaded.seed, loaded.round, loaded.metrics) == \
           ("0.1.0", "rte", 7, 3, {"accuracy": 0.625})
    model = tiny_bert()
    loaded.apply(model, check_weights=False)
    assert all(bool((w[~loaded.masks[k]] == 0).all()) for k, w in prunable_weights(model).items())
    # and a θi ticket in 0.1.0's layout: masks and rewind weights
    theta_i = _ticket(tiny_bert(), 0.3, rewind="theta_i:2")
    theta_i.weights = {k: v.detach().clone() for k, v in tiny_bert(seed=4).bert.named_parameters()}
    _save_as_0_1_0(theta_i, tmp_path / "theta_i.safetensors")
    again = Ticket.load(tmp_path / "theta_i.safetensors")
    assert all(torch.equal(again.masks[k], m) for k, m in theta_i.masks.items())
    assert all(torch.equal(again.weights[k], w) for k, w in theta_i.weights.items())


def test_a_packed_mask_cut_short_or_of_the_wrong_length_is_refused(tmp_path):
    good = tmp_path / "good.safetensors"
    _ticket(tiny_bert()).save(good)
    with safe_open(str(good), framework="pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    key = "mask/encoder.layer.0.attention.self.query.weight"

    def variant(name, header=header, **changes):
        path = tmp_path / f"{name}.safetensors"
        save_file({**tensors, **changes}, str(path), metadata=header)
        return path
    for name, tensor in (("short", tensors[key][:-1]), ("long", torch.cat([tensors[key], tensors[key][:1]])),
                         ("bools", torch.ones(16, 16, dtype=torch.bool)), ("2d", tensors[key].reshape(4, -1))):
        with pytest.raises(TicketError, match="encoder.layer.0.attention.self.query.weight .*cut short or corrupt"):
            Ticket.load(variant(name, **{key: tensor}))
    shapes = json.loads(header["mask_shapes"])
    del shapes[key[len("mask/"):]]
    with pytest.raises(TicketError, match="shapes recorded"):
        Ticket.load(variant("no-shape", header={**header, "mask_shapes": json.dumps(shapes)}))
    with pytest.raises(TicketError, match="truncated or corrupt"):
        Ticket.load(variant("no-shapes", header={k: v for k, v in header.items() if k != "mask_shapes"}))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-3])  # the file cut inside the last packed mask
    with pytest.raises(TicketError, match="truncated or corrupt"):
        Ticket.load(truncated)
    with pytest.raises(TicketError, match="newer nni_bert_tickets"):
        Ticket.load(variant("newer", header={**header, "format": "nni_bert_tickets.ticket/3"}))


def _imp(model, output_dir, rewind=0, head="keep", fail_at=None, name="/models/base-a"):
    """IMP on the toy task (5 rounds to 40 %); ``fail_at``: the training call that is killed."""
    model.config._name_or_path = name
    evaluator = toy_evaluator(model, steps=4)
    train, calls = evaluator.training_func, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == fail_at:
            raise KeyboardInterrupt("killed")
        train(*args, **kwargs)
    evaluator.training_func = flaky
    pruner = IMPPruner(model, bert_config_list(model, 0.4), evaluator, step=0.1, rewind=rewind, head=head,
                       output_dir=str(output_dir))
    pruner.compress()
    return pruner, len(calls)


def _other_head(model):
    """The same body with another task head, so a resume that used the model's head values would differ."""
    with torch.no_grad():
        model.classifier.weight.normal_(generator=torch.Generator().manual_seed(9))
        model.classifier.bias.fill_(0.5)
    return model


@pytest.mark.parametrize("rewind, head", [(0, "keep"), (0, "rewind"), (2, "rewind"), (None, "keep")])
def test_the_resume_state_holds_no_copy_of_the_body_after_a_rewinding_round(rewind, head, tmp_path):
    straight, _ = _imp(tiny_bert(), tmp_path / "a", rewind, head)
    with pytest.raises(KeyboardInterrupt):
        _imp(tiny_bert(), tmp_path / "b", rewind, head, fail_at=3)
    state = load_file(tmp_path / "b" / "imp_state.safetensors")
    params = dict(tiny_bert().named_parameters())
    head_names = {"classifier.weight", "classifier.bias"}
    model = {k[len("model/"):] for k in state if k.startswith("model/")}
    rewound = {k[len("rewind/"):] for k in state if k.startswith("rewind/")}
    masks = {k: v for k, v in state.items() if k.startswith("mask/")}
    assert len(masks) == 13 and all(v.dtype == torch.uint8 for v in masks.values())
    covered = sum(w.numel() for w in prunable_weights(tiny_bert()).values())
    assert sum(v.numel() for v in masks.values()) == covered // 8
    if rewind is None:  # standard pruning: the trained body is the state
        assert {n.replace("._nni_wrapper", "") for n in model} == set(params) and not rewound
    else:  # θ0 comes from the model, θi from its own file beside the state: only the head and its rewind point
        assert model == head_names and rewound == head_names
    theta_i = tmp_path / "b" / "theta_i.safetensors"
    assert theta_i.exists() == (rewind == 2)
    if rewind == 2:  # the whole θi, once, apart from the state (which git can carry: a few MB for a real model)
        assert {n.replace("._nni_wrapper", "") for n in load_file(theta_i)} == set(params)
    resumed, calls = _imp(_other_head(tiny_bert()), tmp_path / "b", rewind, head)
    assert calls == 3  # rounds 2, 3, 4
    assert [r["metrics"] for r in resumed.trajectory] == [r["metrics"] for r in straight.trajectory]
    for a, b in zip(straight.tickets, resumed.tickets):
        assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    final = {k[len("model/"):] for k in load_file(tmp_path / "b" / "imp_state.safetensors") if k.startswith("model/")}
    assert {n.replace("._nni_wrapper", "") for n in final} == set(params)  # after the last round: the trained model
    again, calls = _imp(_other_head(tiny_bert()), tmp_path / "b", rewind, head)
    assert calls == 0
    live = dict(again.bound_model.named_parameters())  # a finished run's model is the trained one, bit for bit
    assert all(torch.equal(v, live[k]) for k, v in straight.bound_model.named_parameters())


@pytest.mark.parametrize("head", ["keep", "rewind"])
def test_a_theta_i_run_carried_without_its_theta_i_file_takes_theta_i_again_and_ends_the_same(head, tmp_path, caplog):
    """What a run store carried in git holds of a θi run: the state and the tickets, not the 90 MB θi. The resume
    trains round 0 again up to step i (one training call, stopped there) and ends bit for bit as an uninterrupted
    run; a resume that kept the file trains no extra round."""
    straight, _ = _imp(tiny_bert(), tmp_path / "a", rewind=2, head=head)
    with pytest.raises(KeyboardInterrupt):
        _imp(tiny_bert(), tmp_path / "b", rewind=2, head=head, fail_at=3)  # rounds 0 and 1 done
    (tmp_path / "b" / "theta_i.safetensors").unlink()
    with caplog.at_level("WARNING", logger="nni_bert_tickets.core.pruners"):
        resumed, calls = _imp(_other_head(tiny_bert()), tmp_path / "b", rewind=2, head=head)
    assert "holds no θi: training round 0 again from θ0 up to step 2" in caplog.text
    assert calls == 1 + 3  # round 0 up to θ2, then rounds 2, 3, 4
    assert [r["metrics"] for r in resumed.trajectory] == [r["metrics"] for r in straight.trajectory]
    for a, b in zip(straight.tickets, resumed.tickets):
        assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    final, again = straight.tickets[-1].weights, resumed.tickets[-1].weights  # θi itself, as the ticket carries it
    assert set(final) == set(again) and all(torch.equal(final[k], again[k]) for k in final)
    live = dict(resumed.bound_model.named_parameters())
    assert all(torch.equal(v, live[k]) for k, v in straight.bound_model.named_parameters())
    _, calls = _imp(tiny_bert(), tmp_path / "b", rewind=2, head=head)
    assert calls == 0  # finished: nothing trained again


def test_a_theta_i_run_with_neither_theta_i_nor_its_start_head_is_refused_before_training(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _imp(tiny_bert(), tmp_path, rewind=2, fail_at=3)
    (tmp_path / "theta_i.safetensors").unlink()
    state_file = tmp_path / "imp_state.safetensors"
    header = safe_open(str(state_file), framework="pt").metadata()
    state = load_file(state_file)
    assert any(k.startswith("start/") for k in state)
    save_file({k: v for k, v in state.items() if not k.startswith("start/")}, str(state_file), metadata=header)
    with pytest.raises(ValueError, match=r"holds neither θi nor the head round 0 started from: delete the folder"):
        _imp(tiny_bert(), tmp_path, rewind=2, fail_at=1)  # the first training call would raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["bert.embeddings.LayerNorm.weight", "bert.encoder.layer.1.output.dense.bias",
                                   "bert.encoder.layer.0.attention.self.query.weight"])
def test_a_resume_onto_a_base_model_whose_weights_changed_is_refused_naming_it(where, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _imp(tiny_bert(), tmp_path, fail_at=3)
    changed = tiny_bert()
    with torch.no_grad():
        dict(changed.named_parameters())[where].view(-1)[0] += 1e-3
    with pytest.raises(ValueError, match=r"base_body.*started from '/models/base-a'.*does not store θ0") as err:
        _imp(changed, tmp_path, fail_at=1)  # refused before any training
    assert "/models/base-a" in str(err.value)
    _, calls = _imp(tiny_bert(), tmp_path)  # the unchanged model resumes
    assert calls == 3


def test_a_resume_state_written_by_0_1_0_still_resumes(tmp_path, monkeypatch):
    straight, _ = _imp(tiny_bert(), tmp_path / "a", head="rewind")

    def state_0_1_0(self, final):  # what 0.1.0's _save wrote: the whole state_dict and the whole θ0
        state = {f"model/{k}": v for k, v in self.bound_model.state_dict().items()}
        state.update({f"rewind/{k}": v for k, v in (self._rewind_state or {}).items()})
        return {k: v.detach().clone().contiguous() for k, v in state.items()}, {}
    settings = IMPPruner._settings
    monkeypatch.setattr(IMPPruner, "_state_tensors", state_0_1_0)
    monkeypatch.setattr(IMPPruner, "_settings", lambda self: {k: v for k, v in settings(self).items()
                                                              if k != "base_body"})
    with pytest.raises(KeyboardInterrupt):
        _imp(tiny_bert(), tmp_path / "b", head="rewind", fail_at=3)
    monkeypatch.undo()
    header = safe_open(str(tmp_path / "b" / "imp_state.safetensors"), framework="pt").metadata()
    assert "state" not in header and "base_body" not in json.loads(header["settings"])
    resumed, calls = _imp(_other_head(tiny_bert()), tmp_path / "b", head="rewind")
    assert calls == 3
    assert [r["metrics"] for r in resumed.trajectory] == [r["metrics"] for r in straight.trajectory]
    assert all(torch.equal(a.masks[k], b.masks[k]) for a, b in zip(straight.tickets, resumed.tickets) for k in a.masks)


def test_tidy_keeps_what_it_says_and_a_missing_intermediate_ticket_is_a_clear_error(tmp_path):
    config = ExperimentConfig(task="rte", model="tiny", output_root=str(tmp_path), target_sparsity=0.4)
    imp_dir = tmp_path / config.run_name() / "imp"
    pruner, _ = _imp(tiny_bert(), imp_dir, rewind=1)
    (imp_dir / "step-checkpoint.old").mkdir()  # a leftover of a kill
    everything = sorted(p.name for p in imp_dir.iterdir())
    assert tidy_finished(imp_dir, "all", pruner.trajectory) == [] and sorted(p.name for p in imp_dir.iterdir()) == everything
    assert set(tidy_finished(imp_dir, "tickets", pruner.trajectory)) == {"imp_state.safetensors", "theta_i.safetensors",
                                                                         "step-checkpoint.old"}
    tickets = [f"ticket-round{r:02d}.safetensors" for r in range(5)]
    # a θi run keeps the state before its last round, to train that round again if its ticket does not travel
    assert sorted(p.name for p in imp_dir.iterdir()) == [BEFORE_LAST_FILE, *tickets, "trajectory.json"]
    (imp_dir.parent / "metrics.json").write_text(json.dumps({"trajectory": pruner.trajectory}))
    assert torch.equal(imp_ticket(config, 0.2).masks["pooler.dense.weight"], pruner.tickets[2].masks["pooler.dense.weight"])
    assert tidy_finished(imp_dir, "final", pruner.trajectory) == [BEFORE_LAST_FILE, *tickets[:-1]]
    assert sorted(p.name for p in imp_dir.iterdir()) == [tickets[-1], "trajectory.json"]
    assert tidy_finished(imp_dir, "final", pruner.trajectory) == []  # idempotent
    final = imp_ticket(config, 0.4)  # the final θi ticket keeps its rewind weights
    assert final.weights is not None and torch.equal(final.masks["pooler.dense.weight"],
                                                     pruner.tickets[-1].masks["pooler.dense.weight"])
    with pytest.raises(FileNotFoundError, match="keep: final"):
        imp_ticket(config, 0.2)
    with pytest.raises(ValueError, match="keep must be"):
        tidy_finished(imp_dir, "some", pruner.trajectory)
    with pytest.raises(ValueError, match="keep must be"):  # an unvalidated config: refused before any work
        run_imp(dataclasses.replace(config, keep="fianl", model=str(tmp_path / "absent")))
