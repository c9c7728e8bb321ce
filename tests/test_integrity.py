"""Altered ticket files are refused (the SHA-256 digest in the header), and a full disk leaves what was there."""
import errno
import json
import logging
import random
import struct
from pathlib import Path

import pytest

from conftest import tiny_bert
from nni_bert_tickets import Ticket, TicketError, global_magnitude_masks, prunable_weights
from nni_bert_tickets.core.files import atomic_write, atomic_write_text
from nni_bert_tickets.training.checkpoints import read_progress, save_checkpoint

DATA = Path(__file__).resolve().parent / "data"


def _saved(tmp_path, theta_i=False) -> Path:
    model = tiny_bert()
    ticket = Ticket.from_model(model, global_magnitude_masks(prunable_weights(model), 0.5), task="rte", seed=3)
    if theta_i:
        ticket.rewind, ticket.weights = "theta_i:2", {k: v.detach().clone() for k, v in tiny_bert(4).bert.named_parameters()}
    path = tmp_path / "ticket.safetensors"
    ticket.save(path)
    return path


def _header_length(raw: bytes) -> int:
    return struct.unpack("<Q", raw[:8])[0]


@pytest.mark.parametrize("theta_i", [False, True])
def test_every_single_bit_flip_in_the_tensor_data_is_refused_naming_the_file(tmp_path, theta_i):
    path = _saved(tmp_path, theta_i)
    raw = path.read_bytes()
    start = 8 + _header_length(raw)
    assert Ticket.load(path).masks  # the untouched file loads
    rng = random.Random(0)
    for i in range(30):
        position, bit = rng.randrange(start, len(raw)), rng.randrange(8)
        altered = bytearray(raw)
        altered[position] ^= 1 << bit
        bad = tmp_path / f"flip{i}.safetensors"
        bad.write_bytes(bytes(altered))
        with pytest.raises(TicketError, match=f"{bad.name} was altered"):
            Ticket.load(bad)


def test_random_changes_in_the_header_are_refused(tmp_path):
    path = _saved(tmp_path)
    raw = path.read_bytes()
    end = 8 + len(raw[8:8 + _header_length(raw)].rstrip(b" "))  # the JSON, not the padding after it
    rng = random.Random(1)
    for i in range(40):
        position = rng.randrange(8, end)
        altered = bytearray(raw)
        altered[position] = rng.choice([b for b in range(32, 127) if b != raw[position]])
        bad = tmp_path / f"header{i}.safetensors"
        bad.write_bytes(bytes(altered))
        with pytest.raises(TicketError, match=bad.name):
            Ticket.load(bad)


def test_renaming_the_digest_does_not_pass_a_file_off_as_an_old_one(tmp_path):
    path = _saved(tmp_path)
    raw = path.read_bytes()
    assert raw.count(b'"sha256"') == 1
    bad = tmp_path / "renamed.safetensors"
    bad.write_bytes(raw.replace(b'"sha256"', b'"sha257"'))
    with pytest.raises(TicketError, match="renamed.safetensors has header entries a ticket never has"):
        Ticket.load(bad)


def test_a_file_without_a_digest_loads_with_a_note(caplog):
    with caplog.at_level(logging.INFO, logger="nni_bert_tickets.core.ticket"):
        ticket = Ticket.load(DATA / "ticket-0.1.0.safetensors")
    assert ticket.version == "0.1.0"
    assert any("carries no digest" in r.getMessage() and "ticket-0.1.0" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def _disk_full_after(n_bytes):
    def write(tmp):
        Path(tmp).write_bytes(b"x" * n_bytes)
        raise OSError(errno.ENOSPC, "No space left on device")
    return write


def test_a_ticket_save_on_a_full_disk_keeps_the_previous_file_and_says_what_it_needed(tmp_path, monkeypatch):
    import nni_bert_tickets.core.ticket as ticket_module
    path = _saved(tmp_path)
    before = path.read_bytes()
    monkeypatch.setattr(ticket_module, "save_file", lambda tensors, tmp, **kw: _disk_full_after(100)(tmp))
    model = tiny_bert(seed=5)
    other = Ticket.from_model(model, global_magnitude_masks(prunable_weights(model), 0.3))
    with pytest.raises(OSError, match=r"no space left on the device to write .*ticket.safetensors: it needs about "
                                      r"\d+ bytes") as err:
        other.save(path)
    assert err.value.errno == errno.ENOSPC
    needed = int(str(err.value).split("needs about ")[1].split()[0])
    assert 0.9 * len(before) < needed < 1.5 * len(before)  # the same layout as the file saved before
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["ticket.safetensors"]


def test_a_text_write_on_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    result = tmp_path / "result.json"
    atomic_write_text(result, json.dumps({"accuracy": 0.5}))
    with pytest.raises(OSError, match=r"to write .*result.json: at least 7 bytes were written"):
        atomic_write(result, _disk_full_after(7))
    text = "x" * 3000

    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr("builtins.open", lambda *a, **k: full(a[0]))
    with pytest.raises(OSError, match="result.json: it needs about 3000 bytes"):
        atomic_write_text(result, text)
    monkeypatch.undo()
    assert json.loads(result.read_text()) == {"accuracy": 0.5} and [p.name for p in tmp_path.iterdir()] == ["result.json"]
    with pytest.raises(OSError, match="Permission"):  # other errors pass through unchanged
        atomic_write(result, lambda tmp: (_ for _ in ()).throw(PermissionError(errno.EACCES, "Permission denied")))


class _Accelerator:
    """What save_checkpoint uses of an Accelerator, with a save_state that fills the disk after ``room`` bytes."""
    is_main_process = True

    def __init__(self, room=None):
        self.room = room

    def wait_for_everyone(self):
        pass

    def save_state(self, folder):
        Path(folder).mkdir(parents=True)
        if self.room is not None:
            _disk_full_after(self.room)(Path(folder) / "model.safetensors")
        (Path(folder) / "model.safetensors").write_bytes(b"w" * 5000)


def test_a_step_checkpoint_on_a_full_disk_keeps_the_previous_one(tmp_path):
    folder = str(tmp_path / "step-checkpoint")
    save_checkpoint(_Accelerator(), folder, {"step": 3, "total": 9, "data_seed": 1}, {})
    with pytest.raises(OSError, match=r"step-checkpoint.tmp: it needs about \d+ bytes"):
        save_checkpoint(_Accelerator(room=1000), folder, {"step": 6, "total": 9, "data_seed": 1}, {})
    assert read_progress(folder, 9)["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-checkpoint"]


def test_saving_the_same_ticket_again_leaves_the_file_alone_and_a_changed_or_damaged_one_is_rewritten(tmp_path):
    # safetensors orders header keys differently from one save to the next: republishing an unchanged ticket would
    # otherwise change its bytes (and a repository's history) for nothing
    path = _saved(tmp_path)
    ticket = Ticket.load(path)
    raw = path.read_bytes()
    swapped = raw[:8] + raw[8:8 + _header_length(raw)][::-1] + raw[8 + _header_length(raw):]  # unreadable header
    path.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))  # the same header and digest, one data bit changed
    ticket.save(path)
    assert path.read_bytes() != raw[:-1] + bytes([raw[-1] ^ 1]) and Ticket.load(path).masks.keys() == ticket.masks.keys()
    before = path.read_bytes()
    ticket.save(path)
    assert path.read_bytes() == before  # unchanged content: not written again
    ticket.seed = 4  # other metadata: another digest, written
    ticket.save(path)
    assert Ticket.load(path).seed == 4
    path.write_bytes(swapped)
    ticket.save(path)
    assert Ticket.load(path).seed == 4
