"""Checks of ``structured_peers.py``'s arguments, all made before any training."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Tuple


def parse_point(text: str) -> Tuple[float, float, int]:
    """``H:C`` or ``H:C:SEEDS``."""
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        return float(parts[0]), float(parts[1]), int(parts[2]) if len(parts) == 3 else 1
    except ValueError:
        raise SystemExit(f"--points: {text!r} is not H:C or H:C:SEEDS (e.g. 0.5:0.6:3)") from None


def check_points(points, heads: int, channels: int) -> None:
    """Refuse points torch-pruning's per-layer cut and the ticket could not both reach, before any training."""
    for h, c, seeds in points:
        if not (0 <= h < 1 and 0 <= c < 1) or seeds < 1:
            raise SystemExit(f"--points: {h}:{c}:{seeds}: sparsities must be in [0, 1), seeds at least 1")
        if abs(h * heads - round(h * heads)) > 1e-3 or round(h * heads) >= heads:
            raise SystemExit(f"--points: head sparsity {h} is not a whole number of this model's {heads} heads per "
                             f"layer below {heads} (the peers remove the same count in every layer)")
        if channels - round(c * channels) < 1:
            raise SystemExit(f"--points: channel sparsity {c} leaves no FFN channel")


def check_overwrite(out: Path, methods: List[str], points, replace: bool) -> None:
    """Refuse, before any training, a call that would drop methods or points an existing ``out`` holds.

    The file is written whole, because its speed-ups are only comparable when timed in one process; a call with
    fewer methods would silently lose the others' timings. Every variant is a cached unit, so naming them all again
    costs only the timing.
    """
    if replace or not out.is_file():
        return
    held = json.loads(out.read_text())
    dropped = sorted(set(held.get("methods", {})) - set(methods))
    asked = {(h, c) for h, c, _ in points}
    lost = [f"{e['head_sparsity']}:{e['channel_sparsity']}" for e in held.get("points", [])
            if (e["head_sparsity"], e["channel_sparsity"]) not in asked]
    if dropped or lost:
        raise SystemExit(f"--json {out} holds " + " and ".join(
            x for x in (f"methods {dropped}" if dropped else "", f"points {lost}" if lost else "") if x) +
            " that this call would drop (the file is written whole, all variants timed in one run); name them "
            "again (their finished units are read back), write to another --json, or pass --replace")
