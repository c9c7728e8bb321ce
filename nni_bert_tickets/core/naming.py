"""How cached units of work are named on disk: the one naming scheme of every run directory."""
from __future__ import annotations

import hashlib
import json
from typing import Any, Dict

__all__ = ["unit_name"]


def unit_name(kind: str, settings: Dict[str, Any]) -> str:
    """``<kind>-<hash>``: a unit of work (an IMP run, a full-model fine-tuning, a baseline, a transfer, a warmed MLM
    head) is named by exactly the settings it depends on, so equal settings share it and different ones never do."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{kind}-{digest}"
