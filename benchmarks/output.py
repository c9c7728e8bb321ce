"""What a benchmark does last: its result as indented JSON on stdout, and written atomically where asked."""
from __future__ import annotations

import json
from typing import Any, Dict, Optional

from nni_bert_tickets.core.files import atomic_write_text

__all__ = ["emit"]


def emit(result: Dict[str, Any], path: Optional[str] = None) -> str:
    """Print ``result`` as JSON and, with ``path``, write it there (temporary file, then rename); returns the text."""
    text = json.dumps(result, indent=1)
    if path:
        atomic_write_text(path, text + "\n")
    print(text)
    return text
