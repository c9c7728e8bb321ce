"""Ticket folders the Hugging Face way: save_pretrained / from_pretrained (a folder, the Hub cache offline) /
push_to_hub (its upload, through a recording HfApi: the network is not reachable here)."""
import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import constants
from safetensors import safe_open

from conftest import tiny_bert
from nni_bert_tickets import Ticket, TicketError, global_magnitude_masks, prunable_weights
from nni_bert_tickets.core.hub import read_card

FULL = {"mean": 0.70, "std": 0.02, "runs": [0.68, 0.70, 0.72]}


def _ticket(sparsity=0.5, seed=0):
    model = tiny_bert(seed)
    return Ticket.from_model(model, global_magnitude_masks(prunable_weights(model), sparsity), task="rte", seed=3,
                             round=5, schedule="linear:0.1", rewind="theta0", metrics={"metric": 0.71})


def _same(a: Ticket, b: Ticket) -> bool:
    return a.masks.keys() == b.masks.keys() and all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks) \
        and a.metadata() == b.metadata()


def test_a_saved_folder_has_the_file_and_a_card_that_states_the_facts_and_loads_back(tmp_path):
    ticket = _ticket()
    ticket.save_pretrained(tmp_path / "rte-50", metric="accuracy", full_model=FULL, base_model="owner/base",
                           license="apache-2.0", dataset="nyu-mll/glue", dataset_config="rte")
    folder = tmp_path / "rte-50"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "ticket.safetensors"]
    meta = read_card(folder / "README.md")
    facts = meta["ticket"]
    assert meta["base_model"] == "owner/base" and meta["license"] == "apache-2.0"
    assert facts["sparsity"] == pytest.approx(ticket.sparsity) and facts["task"] == "rte"
    assert (facts["metric"], facts["value"], facts["full_model"]) == ("accuracy", 0.71, FULL)
    assert "iterative magnitude pruning (linear:0.1), surviving weights rewound to θ0, round 5" in facts["found_by"]
    result = meta["model-index"][0]["results"][0]
    assert result["metrics"][0] == {"type": "accuracy", "value": 0.71, "name": "accuracy"}
    assert result["dataset"]["type"] == "nyu-mll/glue" and result["dataset"]["config"] == "rte"
    text = (folder / "README.md").read_text()
    assert "@inproceedings{chen2020lottery" in text and "Ticket.from_pretrained" in text

    loaded = Ticket.from_pretrained(folder)
    assert _same(loaded, Ticket.load(folder / "ticket.safetensors"))
    assert loaded.base_model == "owner/base" and loaded.fingerprint == ticket.fingerprint
    assert all(torch.equal(loaded.masks[k], ticket.masks[k]) for k in ticket.masks)
    model = tiny_bert(0)
    loaded.apply(model)  # the fingerprint still holds for the base weights
    assert all(bool((w[~loaded.masks[k]] == 0).all()) for k, w in prunable_weights(model).items())


def _cache_repo(cache: Path, repo_id: str, folders: dict) -> dict:
    """A Hub cache laid out as huggingface_hub lays it out: blobs by hash, snapshots/<commit>/ linking to them,
    refs/<revision> holding the commit. ``folders``: revision -> a ticket folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commits = {}
    for revision, folder in folders.items():
        commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
        for path in Path(folder).iterdir():
            blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, blob)
            link = repo / "snapshots" / commit / path.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path("..", "..", "blobs", blob.name))
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / revision).write_text(commit)
        commits[revision] = commit
    return commits


def test_offline_a_repo_id_is_read_from_the_hub_cache_at_its_revision(tmp_path, monkeypatch):
    main, other = _ticket(0.5), _ticket(0.3, seed=1)
    main.save_pretrained(tmp_path / "main", metric="accuracy")
    other.save_pretrained(tmp_path / "v1", metric="accuracy")
    cache = tmp_path / "home" / "hub"
    commits = _cache_repo(cache, "someone/rte-ticket", {"main": tmp_path / "main", "v1": tmp_path / "v1"})
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)  # no folder of that name here
    assert _same(Ticket.from_pretrained("someone/rte-ticket"), main)
    assert _same(Ticket.from_pretrained("someone/rte-ticket", revision="v1"), other)
    assert _same(Ticket.from_pretrained("someone/rte-ticket", revision=commits["v1"]), other)
    assert _same(Ticket.from_pretrained("someone/rte-ticket", cache_dir=str(cache)), main)
    with pytest.raises(FileNotFoundError, match=r"'someone/absent' is not a folder here.*HF_HUB_OFFLINE is set.*"
                                                r"Hub cache .*home/hub has no copy"):
        Ticket.from_pretrained("someone/absent")
    with pytest.raises(FileNotFoundError, match="at revision v2"):
        Ticket.from_pretrained("someone/rte-ticket", revision="v2")


def test_bad_folders_and_cards_are_clear_errors(tmp_path):
    ticket = _ticket()
    folder = ticket.save_pretrained(tmp_path / "good", metric="accuracy", base_model="owner/base")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "model.safetensors").write_bytes(b"")
    with pytest.raises(TicketError, match=r"empty holds no ticket file ticket.safetensors \(it has model.safetensors\)"):
        Ticket.from_pretrained(empty)
    card = (folder / "README.md").read_text()
    meta = read_card(folder / "README.md")
    for name, change, message in (
            ("sparsity", lambda m: m["ticket"].update(sparsity=0.9), "sparsity 0.9 in the card, 0.5"),
            ("base", lambda m: m.update(base_model="owner/other"), "base model 'owner/other' in the card, 'owner/base'"),
            ("file", lambda m: m["ticket"].update(sha256="0" * 64), "the card describes another file")):
        bad = tmp_path / name
        shutil.copytree(folder, bad)
        changed = yaml.safe_load(yaml.safe_dump(meta))
        change(changed)
        (bad / "README.md").write_text("---\n" + yaml.safe_dump(changed) + "---\n" + card.split("---", 2)[2])
        with pytest.raises(TicketError, match=f"{name}/README.md and ticket.safetensors disagree: {message}"):
            Ticket.from_pretrained(bad)
    other = tmp_path / "other"  # the card of one ticket beside the file of another
    shutil.copytree(folder, other)
    _ticket(0.3, seed=2).save(other / "ticket.safetensors")
    with pytest.raises(TicketError, match="disagree: sparsity"):
        Ticket.from_pretrained(other)
    (other / "README.md").write_text("# no metadata\n")
    with pytest.raises(TicketError, match="no 'ticket:' entry"):
        Ticket.from_pretrained(other)
    (other / "README.md").unlink()  # no card at all: the file alone
    assert Ticket.from_pretrained(other).sparsity == pytest.approx(0.3, abs=1e-3)
    with pytest.raises(FileNotFoundError, match="no ticket folder at tickets/all-MiniLM-L6-v2/rte-50"):
        Ticket.from_pretrained("tickets/all-MiniLM-L6-v2/rte-50")
    with pytest.raises(TicketError, match="is a file, not a ticket folder"):
        Ticket.from_pretrained(folder / "ticket.safetensors")
    with pytest.raises(ValueError, match="local folder: it has no revision"):
        Ticket.from_pretrained(folder, revision="main")


class _RecordingApi:
    """HfApi's two calls push_to_hub makes, recording what would be created and uploaded."""
    calls = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploaded = _RecordingApi.copy_to
        shutil.copytree(folder_path, uploaded)  # the temporary folder is gone after the call
        self.calls.append(("upload_folder", repo_id, kwargs))
        return "commit-info"


def test_push_to_hub_uploads_the_folder_save_pretrained_writes(tmp_path, monkeypatch):
    import huggingface_hub
    ticket = _ticket()
    card = dict(metric="accuracy", full_model=FULL, base_model="owner/base")
    monkeypatch.setattr(huggingface_hub, "HfApi", _RecordingApi)
    monkeypatch.setattr(_RecordingApi, "calls", [])
    monkeypatch.setattr(_RecordingApi, "copy_to", tmp_path / "uploaded", raising=False)
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE is set"):  # the tests' setting: nothing is attempted
        ticket.push_to_hub("someone/rte-ticket", **card)
    assert _RecordingApi.calls == []
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ValueError, match="not a Hub repository id"):
        ticket.push_to_hub("not/a/repo id", **card)
    assert ticket.push_to_hub("someone/rte-ticket", private=True, token="t", **card) == "commit-info"
    (create, name, options), (upload, name2, upload_options) = _RecordingApi.calls
    assert (create, name, options) == ("create_repo", "someone/rte-ticket",
                                       {"repo_type": "model", "private": True, "exist_ok": True})
    assert (upload, name2, upload_options["repo_type"]) == ("upload_folder", "someone/rte-ticket", "model")
    saved = ticket.save_pretrained(tmp_path / "saved", **card)
    uploaded = tmp_path / "uploaded"
    assert sorted(p.name for p in uploaded.iterdir()) == ["README.md", "ticket.safetensors"]
    assert (uploaded / "README.md").read_bytes() == (saved / "README.md").read_bytes()  # it names the file's digest
    a, b = (safe_open(str(f / "ticket.safetensors"), framework="pt") for f in (uploaded, saved))
    assert a.metadata() == b.metadata() and a.keys() == b.keys()  # (safetensors orders header entries at random)
    assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
    assert _same(Ticket.from_pretrained(uploaded), ticket.__class__.load(saved / "ticket.safetensors"))
