"""What a benchmark shares: the arguments of the structured benchmarks, the command that reproduces a run, and its
result as indented JSON on stdout, written atomically where asked."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from nni_bert_tickets.core.files import atomic_write_text

__all__ = ["emit", "command", "structured_arguments"]


def structured_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The task, model and data, and the fractions of heads and FFN channels a structured ticket removes."""
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--model", default="../shared/models/all-MiniLM-L6-v2")
    parser.add_argument("--data-dir", default="../shared/data/glue")
    parser.add_argument("--head-sparsity", type=float, default=0.5)
    parser.add_argument("--channel-sparsity", type=float, default=0.5)
    return parser


def command(script: str, argv: Optional[Sequence[str]] = None) -> str:
    """The command line that runs benchmark ``script`` (its ``__file__``) with ``argv`` (default: this process's
    arguments), to store beside its result."""
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", f"benchmarks/{Path(script).name}", *map(shlex.quote, args)])


def emit(result: Dict[str, Any], path: Optional[str] = None) -> str:
    """Print ``result`` as JSON and, with ``path``, write it there (temporary file, then rename); returns the text."""
    text = json.dumps(result, indent=1)
    if path:
        atomic_write_text(path, text + "\n")
    print(text)
    return text
