"""Counting prompt tokens before a model is loaded, to report (not cut) over-long prompts.

Every SD family uses the same CLIP BPE vocabulary, so one tokenizer built from the shipped
merges counts for all of them.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

_lock = threading.Lock()  # HF tokenizers are not documented as thread-safe


@functools.cache
def _tokenizer() -> Any:
    from inference.models import clip_tokenizer

    # No length cap: this tokenizer only counts, and must not warn about long prompts.
    return clip_tokenizer(model_max_length=1_000_000)


def count_prompt_tokens(text: str) -> int:
    """Tokens in `text`, without the start/end markers the encoder adds."""
    if not text:
        return 0
    with _lock:
        return len(_tokenizer()(text, add_special_tokens=False)["input_ids"])
