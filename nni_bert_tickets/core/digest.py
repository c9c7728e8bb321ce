"""The SHA-256 digest a ticket file carries of its own masks, weights and metadata.

The digest covers every tensor of the file (name, dtype, shape and raw bytes: the packed masks and any rewind
weights) and every header entry but itself (format, metadata, mask shapes), so a changed bit anywhere in what
the ticket means changes it. It is stored in the safetensors header as ``sha256``; files written before it
existed carry none and still load.

The fingerprint is the other hash a ticket carries: of the base weights it was found on (its surviving entries), so
that applying it to other weights is refused.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Dict, Mapping, Optional

import torch

__all__ = ["DIGEST_KEY", "ticket_digest", "digest_problem", "file_holds", "fingerprint", "matrix_fingerprints"]
DIGEST_KEY = "sha256"
_HEADER = {"format", "meta", "mask_shapes", DIGEST_KEY}  # every entry a ticket's header may have
_log = logging.getLogger("nni_bert_tickets.core.ticket")


def ticket_digest(header: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> str:
    """Hex SHA-256 over ``header`` (the digest entry left out) and ``tensors``, both in sorted key order."""
    digest = hashlib.sha256()
    for key in sorted(k for k in header if k != DIGEST_KEY):
        _update(digest, f"header/{key}", header[key].encode())
    for key in sorted(tensors):
        tensor = tensors[key].detach().cpu().contiguous()
        _update(digest, f"tensor/{key}:{tensor.dtype}:{tuple(tensor.shape)}",
                tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def digest_problem(path: str, header: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> Optional[str]:
    """What is wrong with a ticket file's content against its digest (to follow its path), or None; a file
    without a digest (written before there was one) passes, with a logged note."""
    if set(header) - _HEADER:  # e.g. the digest's own name altered, which would pass it off as an older file
        return (f"has header entries a ticket never has ({sorted(set(header) - _HEADER)}): the file was altered "
                "or is not a ticket")
    if DIGEST_KEY not in header:
        _log.info("%s carries no digest (written before nni_bert_tickets 0.2): alterations to it cannot be "
                  "detected", path)
        return None
    if ticket_digest(header, tensors) != header[DIGEST_KEY]:
        return ("was altered: its masks, weights or metadata no longer match the SHA-256 digest it was saved with "
                "(a damaged download or an edited file); get a fresh copy")
    return None


def file_holds(path: str, digest: str) -> bool:
    """Whether the ticket file at ``path`` already holds the content whose digest is ``digest``, checked against its
    tensors (so writing that content again can be skipped: safetensors orders header keys differently from one
    save to the next, and a republished ticket would differ in bytes only)."""
    from safetensors import safe_open
    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
            if header.get(DIGEST_KEY) != digest:
                return False
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception:  # no file, or not a readable safetensors file: it does not hold this ticket
        return False
    return not set(header) - _HEADER and ticket_digest(header, tensors) == digest


def _update(digest, label: str, data: bytes) -> None:
    digest.update(f"{label}:{len(data)};".encode())  # lengths first: no two layouts hash the same
    digest.update(data)


def fingerprint(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the names, shapes and float32 values of the *surviving* weights.

    Pruned positions hash as zero, so a base model and the same model with the ticket applied agree.
    """
    digest = hashlib.sha256()
    for key in sorted(masks):
        _hash_matrix(digest, key, weights[key], masks[key])
    return digest.hexdigest()


def matrix_fingerprints(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> Dict[str, str]:
    """One short fingerprint per matrix (as :func:`fingerprint`), so that a ticket applied to a model lacking
    one of its matrices (a pooler) can still check the base weights of the others."""
    out = {}
    for key in sorted(masks):
        digest = hashlib.sha256()
        _hash_matrix(digest, key, weights[key], masks[key])
        out[key] = digest.hexdigest()[:16]
    return out


def _hash_matrix(digest, key: str, weight: torch.Tensor, mask: torch.Tensor) -> None:
    w = weight.detach().float().cpu()
    digest.update(f"{key}:{tuple(w.shape)};".encode())
    digest.update(torch.where(mask.cpu(), w, torch.zeros(())).numpy().tobytes())
