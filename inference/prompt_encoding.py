"""Prompt embeddings with A1111 semantics for a loaded diffusers pipeline.

What AUTOMATIC1111 (`modules/sd_hijack_clip.py`, emphasis "Original") does, with the pipeline's
own tokenizers and text encoders (so textual-inversion tokens added by
`load_textual_inversion` work as in diffusers):

- The prompt is parsed with `inference.prompt_syntax` (extra-network tags removed) and each
  fragment is tokenised on its own.
- Tokens are cut into chunks of 75; when a chunk is full and a comma lies within the last
  `comma_backtrack` (A1111's default 20) tokens, the text after that comma moves to the next
  chunk. BREAK starts a new chunk. Each chunk becomes BOS + tokens + EOS + padding = 77 ids
  and is encoded on its own; the chunks' hidden states are concatenated along the sequence.
- Weights multiply the encoder's output hidden states per token, then the chunk is rescaled
  so its mean is what it was before weighting (z *= w; z *= old_mean / new_mean).
- Every prompt and negative of a call gets the same number of chunks: shorter ones are padded
  with the encoded empty prompt (A1111's "pad prompt/negative prompt" option; ComfyUI and
  Forge also pad).
- SDXL: both encoders' penultimate hidden states, concatenated along the features; the pooled
  embedding is the second encoder's, from the first chunk, unweighted. An empty negative
  prompt gives zero embeddings where the pipeline's `force_zeros_for_empty_prompt` is set
  (A1111 zeroes an all-empty negative batch).

Differences from A1111, all at rounding level or in corner cases:
- each prompt and chunk is encoded and mean-restored alone (A1111 takes the mean over the
  whole batch of one chunk index, so a prompt's result there depends on its batch mates);
- the weighting math runs in float32 and is skipped for a chunk whose weights are all 1.0
  (so an unweighted prompt gives exactly diffusers' own embeddings);
- a multi-vector textual-inversion embedding can be split across two chunks (A1111 moves it
  whole to the next chunk);
- clip_skip: A1111 ignores it for SD 2.x and SDXL; here it counts from the layer the family
  normally uses (1: SD 1.x's last layer, SD 2.x's last layer of the converted encoder,
  SDXL's penultimate), as diffusers' clip_skip does (theirs is ours minus one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from inference.prompt_syntax import BreakMarker, parse_attention, strip_extra_networks
from inference.types import ModelFamily

if TYPE_CHECKING:
    import torch

CHUNK_TOKENS: Final = 75  # the text of one chunk; with BOS and EOS it fills CLIP's 77 positions
COMMA_BACKTRACK: Final = 20  # A1111's default "comma_padding_backtrack"


@dataclass(frozen=True)
class Chunk:
    """77 token ids (BOS, text, EOS, padding) and the weight of each position."""

    ids: tuple[int, ...]
    weights: tuple[float, ...]


def chunk_prompt(
    tokenizer: Any,
    text: str,
    *,
    comma_backtrack: int = COMMA_BACKTRACK,
    convert: Callable[[str], str] | None = None,
) -> list[Chunk]:
    """`text` (A1111 syntax) as A1111's chunks for `tokenizer`: always at least one.

    `convert` rewrites each fragment before tokenising (diffusers' textual-inversion
    `maybe_convert_prompt`, which expands a multi-vector token into its parts).
    """
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    _quiet_long_prompts(tokenizer)

    chunks: list[Chunk] = []
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def next_chunk() -> None:
        nonlocal tokens, weights, last_comma
        fill = CHUNK_TOKENS - len(tokens)
        chunks.append(
            Chunk(
                (bos, *tokens, eos, *[pad] * fill),
                (1.0, *weights, 1.0, *[1.0] * fill),
            )
        )
        tokens, weights, last_comma = [], [], -1

    for fragment in parse_attention(strip_extra_networks(text)):
        if isinstance(fragment, BreakMarker):
            next_chunk()
            continue
        piece, weight = fragment
        for token in _tokenize(tokenizer, convert(piece) if convert else piece):
            if token == comma:
                last_comma = len(tokens)
            elif (
                comma_backtrack
                and len(tokens) == CHUNK_TOKENS
                and last_comma != -1
                and len(tokens) - last_comma <= comma_backtrack
            ):
                # A full chunk with a comma near its end: move the words after the comma on.
                moved_tokens, moved_weights = tokens[last_comma + 1 :], weights[last_comma + 1 :]
                tokens, weights = tokens[: last_comma + 1], weights[: last_comma + 1]
                next_chunk()
                tokens, weights = moved_tokens, moved_weights
            if len(tokens) == CHUNK_TOKENS:
                next_chunk()
            tokens.append(token)
            weights.append(weight)
    if tokens or not chunks:
        next_chunk()
    return chunks


def encode_prompts(
    pipe: Any,
    family: ModelFamily,
    prompts: Sequence[str],
    negatives: Sequence[str],
    clip_skip: int = 1,
    *,
    comma_backtrack: int = COMMA_BACKTRACK,
) -> dict[str, Any]:
    """The embedding arguments of `pipe(...)` for these prompts, read with A1111 syntax.

    Returns `prompt_embeds` and `negative_prompt_embeds` (batch, 77 × chunks, features), and for
    SDXL also `pooled_prompt_embeds` and `negative_pooled_prompt_embeds`: pass them instead of
    `prompt` and `negative_prompt`. One negative per prompt. `clip_skip` as in A1111: 1 uses
    the family's usual layer, 2 the one before it.
    """
    import torch

    if len(prompts) != len(negatives):
        raise ValueError(f"{len(prompts)} prompts but {len(negatives)} negative prompts")
    if not prompts:
        raise ValueError("no prompts to encode")
    if clip_skip < 1:
        raise ValueError(f"clip_skip must be 1 or more, not {clip_skip}")
    sdxl = family == "sdxl"
    encoders = [
        _Encoder(tokenizer, encoder, sdxl, clip_skip)
        for tokenizer, encoder in (
            [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
            if sdxl
            else [(pipe.tokenizer, pipe.text_encoder)]
        )
        if encoder is not None
    ]
    texts = [*prompts, *negatives]
    chunked = [
        [
            chunk_prompt(
                encoder.tokenizer,
                text,
                comma_backtrack=comma_backtrack,
                convert=_converter(pipe, encoder.tokenizer),
            )
            for encoder in encoders
        ]
        for text in texts
    ]
    count = max(len(chunks) for per_encoder in chunked for chunks in per_encoder)
    for per_encoder in chunked:
        for encoder, chunks in zip(encoders, per_encoder, strict=True):
            chunks += [encoder.empty] * (count - len(chunks))

    dtype = encoders[-1].module.dtype
    device = pipe._execution_device
    embeds: list[torch.Tensor] = []
    pooled: list[torch.Tensor] = []
    with torch.no_grad():
        for per_encoder in chunked:
            parts = [
                encoder.encode(chunks)
                for encoder, chunks in zip(encoders, per_encoder, strict=True)
            ]
            embeds.append(torch.cat([hidden for hidden, _ in parts], dim=-1))
            if sdxl:
                pooled_part = parts[-1][1]
                if pooled_part is None:
                    raise ValueError(
                        "the SDXL pipeline's second text encoder gives no pooled output"
                    )
                pooled.append(pooled_part)
        if sdxl and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
            for i, negative in enumerate(negatives, start=len(prompts)):
                if not strip_extra_networks(negative).strip():
                    embeds[i] = torch.zeros_like(embeds[i])
                    pooled[i] = torch.zeros_like(pooled[i])
    stacked = torch.stack(embeds).to(dtype=dtype, device=device)
    result = {
        "prompt_embeds": stacked[: len(prompts)],
        "negative_prompt_embeds": stacked[len(prompts) :],
    }
    if sdxl:
        pooled_stacked = torch.stack(pooled).to(dtype=dtype, device=device)
        result["pooled_prompt_embeds"] = pooled_stacked[: len(prompts)]
        result["negative_pooled_prompt_embeds"] = pooled_stacked[len(prompts) :]
    return result


class _Encoder:
    """One tokenizer and text encoder; encodes each distinct chunk once per call."""

    def __init__(self, tokenizer: Any, module: Any, sdxl: bool, clip_skip: int) -> None:
        layers = module.config.num_hidden_layers
        # SDXL reads the penultimate layer already; clip_skip 1 means that one.
        depth = clip_skip + 1 if sdxl else clip_skip
        if depth > layers + 1:  # hidden_states: the input embeddings, then each layer's output
            raise ValueError(f"clip_skip {clip_skip} is deeper than the text encoder's {layers}")
        self.tokenizer = tokenizer
        self.module = module
        self.sdxl = sdxl
        self.depth = depth
        self.empty = chunk_prompt(tokenizer, "")[0]
        self._cache: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor | None]] = {}

    def encode(self, chunks: list[Chunk]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(hidden states of all chunks (77 × chunks, features), pooled of the first chunk)."""
        import torch

        hidden: list[torch.Tensor] = []
        first_pooled: torch.Tensor | None = None
        for position, chunk in enumerate(chunks):
            z, pooled = self._encode_ids(chunk.ids)
            if position == 0:
                first_pooled = pooled
            hidden.append(_emphasis(z, chunk.weights))
        return torch.cat(hidden, dim=0), first_pooled

    def _encode_ids(self, ids: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
        import torch

        if ids not in self._cache:
            inputs = torch.tensor([ids], dtype=torch.long, device=_input_device(self.module))
            pooled = None
            if self.sdxl:
                output = self.module(inputs, output_hidden_states=True)
                if output[0].ndim == 2:  # the projected, pooled text embedding
                    pooled = output[0][0]
                z = output.hidden_states[-(self.depth)]
            elif self.depth == 1:
                z = self.module(inputs)[0]  # exactly what diffusers' encode_prompt computes
            else:
                output = self.module(inputs, output_hidden_states=True)
                norm = getattr(
                    self.module, "text_model", self.module
                ).final_layer_norm  # transformers 4 | 5
                z = norm(output.hidden_states[-self.depth])
            self._cache[ids] = (z[0], pooled)
        return self._cache[ids]


def _emphasis(z: torch.Tensor, weights: tuple[float, ...]) -> torch.Tensor:
    """A1111's "Original" emphasis: scale each token's hidden state, then restore the mean."""
    import torch

    if all(w == 1.0 for w in weights):
        return z
    original = z.float()
    multipliers = torch.tensor(weights, dtype=torch.float32, device=z.device)
    weighted = original * multipliers[:, None]
    new_mean = weighted.mean()
    if new_mean != 0:  # every weight 0: nothing to restore (A1111 would divide by zero)
        weighted = weighted * (original.mean() / new_mean)
    return weighted.to(z.dtype)


def _converter(pipe: Any, tokenizer: Any) -> Callable[[str], str] | None:
    """diffusers' textual-inversion prompt rewrite for `tokenizer`, if the pipeline has one."""
    convert = getattr(pipe, "maybe_convert_prompt", None)
    if convert is None:
        return None

    def rewrite(text: str) -> str:
        return str(convert(text, tokenizer))

    return rewrite


def _tokenize(tokenizer: Any, text: str) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"])


def _quiet_long_prompts(tokenizer: Any) -> None:
    """Silence transformers' "longer than the maximum sequence length" warning: long prompts
    are chunked here, never fed whole to the encoder. (Its own once-per-tokenizer flag.)"""
    flags = getattr(tokenizer, "deprecation_warnings", None)
    if isinstance(flags, dict):
        flags["sequence-length-is-longer-than-the-specified-maximum"] = True


def _input_device(module: Any) -> Any:
    """Where a module's inputs go (its own device, or the onload device when offloaded)."""
    try:
        from diffusers.utils.torch_utils import get_module_execution_device
    except ImportError:  # diffusers before 0.42
        return module.device
    return get_module_execution_device(module)
