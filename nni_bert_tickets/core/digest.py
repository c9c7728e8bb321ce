"""The SHA-256 digest a ticket file carries of its own masks, weights and metadata.

The digest covers every tensor of the file (name, dtype, shape and raw bytes: the packed masks and any rewind
weights) and every header entry but itself (format, metadata, mask shapes), so a changed bit anywhere in what
the ticket means changes it. It is stored in the safetensors header as ``sha256``; files written before it
existed carry none and still load.
"""
from __future__ import annotations

import hashlib
from typing import Mapping

import torch

__all__ = ["DIGEST_KEY", "ticket_digest"]
DIGEST_KEY = "sha256"


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


def _update(digest, label: str, data: bytes) -> None:
    digest.update(f"{label}:{len(data)};".encode())  # lengths first: no two layouts hash the same
    digest.update(data)
