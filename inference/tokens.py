"""The CLIP tokenizer, built offline from the shipped BPE merges, and prompt token counts.

Every SD family uses the same CLIP BPE vocabulary: one merges file serves SD 1.x, SD 2.x and
both SDXL tokenizers (they differ only in the pad token), and counts prompts before a model is
loaded, to report (not cut) over-long prompts.
"""

from __future__ import annotations

import functools
import gzip
import inspect
import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.checkpoints import CONFIGS_DIR, load_config_json

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

CLIP_MERGES = CONFIGS_DIR / "clip_merges.txt.gz"
CLIP_MAX_LENGTH = 77  # CLIP's position table; a tokenizer built by hand must be told
_lock = threading.Lock()  # HF tokenizers are not documented as thread-safe


@functools.cache
def _tokenizer() -> Any:
    # No length cap: this tokenizer only counts, and must not warn about long prompts.
    return clip_tokenizer(model_max_length=1_000_000)


def count_prompt_tokens(text: str) -> int:
    """Tokens in `text`, without the start/end markers the encoder adds."""
    if not text:
        return 0
    with _lock:
        return len(_tokenizer()(text, add_special_tokens=False)["input_ids"])


# --- building tokenizers ---------------------------------------------------------------


@functools.cache
def _clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    # CLIP's vocabulary is derived from its merges: the 256 byte symbols, the same with the
    # end-of-word mark, one token per merge, then the two special tokens (49408 in all).
    with gzip.open(CLIP_MERGES, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [(a, b) for a, b in (line.split() for line in lines[1:] if line.strip())]
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP byte-level BPE: printable bytes map to themselves, the rest to code points
    # from 256 up, so every byte has a visible, non-whitespace symbol.
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def clip_tokenizer(
    pad_token: str = "<|endoftext|>", model_max_length: int = CLIP_MAX_LENGTH
) -> CLIPTokenizer:
    """The real CLIP BPE tokenizer, built offline from the shipped merges.

    SD 1.x and SDXL's first tokenizer pad with "<|endoftext|>"; SD 2.x and SDXL's second
    (OpenCLIP) tokenizer pad with "!".
    """
    from transformers import CLIPTokenizer

    if "vocab" not in inspect.signature(CLIPTokenizer.__init__).parameters:
        # transformers 4.x tokenizers only read files: write them once, load from there.
        return CLIPTokenizer.from_pretrained(
            write_clip_vocab(_tokenizer_cache()),
            pad_token=pad_token,
            model_max_length=model_max_length,
        )
    vocab, merges = _clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),  # type: ignore[arg-type]  # annotated list[str]; takes pairs too
        pad_token=pad_token,
        model_max_length=model_max_length,
    )


def write_clip_vocab(directory: Path) -> Path:
    """Materialise vocab.json and merges.txt (the usual tokenizer files) in `directory`."""
    vocab, merges = _clip_vocab_and_merges()
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "merges.txt").is_file():
        (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
        lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
        # merges.txt last: its presence marks a complete pair
        (directory / "merges.txt").write_text("\n".join(lines) + "\n", "utf-8")
    return directory


def _tokenizer_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "imagine-bot" / "tokenizer"


def tokenizer_for(config_dir: Path, sub: str) -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    folder = config_dir / sub
    if (folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file():
        tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
        if not tokenizer.model_max_length or tokenizer.model_max_length > CLIP_MAX_LENGTH:
            tokenizer.model_max_length = CLIP_MAX_LENGTH
        return tokenizer
    cfg: dict[str, Any] = {}
    if (folder / "tokenizer_config.json").is_file():
        cfg = load_config_json(config_dir, sub, "tokenizer_config.json")
    pad = cfg.get("pad_token", "<|endoftext|>")
    if isinstance(pad, dict):  # serialised AddedToken
        pad = pad.get("content", "<|endoftext|>")
    length = int(cfg.get("model_max_length") or CLIP_MAX_LENGTH)
    return clip_tokenizer(pad_token=str(pad), model_max_length=min(length, CLIP_MAX_LENGTH))
