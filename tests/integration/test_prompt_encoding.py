"""A1111-style prompt embeddings on the tiny SD 1.x and SDXL pipelines (real loading)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from inference.models import load_pipeline
from inference.prompt_encoding import CHUNK_TOKENS, chunk_prompt, encode_prompts
from inference.testing import TinyModel
from inference.tokens import clip_tokenizer, count_prompt_tokens
from inference.types import ModelSpec

LONG = ", ".join(["a red lighthouse on a rocky shore at dusk"] * 16)  # well over 75 tokens


@pytest.fixture(scope="module")
def sd1(tiny_model: TinyModel) -> Any:
    return load_pipeline(ModelSpec("tiny", str(tiny_model.single_file), config=tiny_model.folder))


@pytest.fixture(scope="module")
def sdxl(tiny_model_sdxl: TinyModel) -> Any:
    spec = ModelSpec("xl", str(tiny_model_sdxl.single_file), config=tiny_model_sdxl.folder)
    return load_pipeline(spec)


def diffusers_sd1(pipe: Any, prompt: str, negative: str, clip_skip: int | None = None) -> tuple:
    return pipe.encode_prompt(prompt, "cpu", 1, True, negative, clip_skip=clip_skip)


def diffusers_sdxl(pipe: Any, prompt: str, negative: str | None, clip_skip: int | None = None):
    return pipe.encode_prompt(
        prompt,
        device="cpu",
        do_classifier_free_guidance=True,
        negative_prompt=negative,
        clip_skip=clip_skip,
    )


def first_chunk(prompt: str, pipe: Any) -> torch.Tensor:
    return encode_prompts(pipe, "sd1", [prompt], [""])["prompt_embeds"][0]


# --- chunking (tokenizer only) -----------------------------------------------------------


def test_chunks_are_77_ids_with_start_end_and_padding() -> None:
    tokenizer = clip_tokenizer()
    [chunk] = chunk_prompt(tokenizer, "a (cat:1.5)")
    cat = tokenizer.convert_tokens_to_ids("cat</w>")
    assert len(chunk.ids) == len(chunk.weights) == 77
    assert chunk.ids[:4] == (tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("a</w>"), cat,
                             tokenizer.eos_token_id)  # fmt: skip
    assert chunk.weights[:4] == (1.0, 1.0, 1.5, 1.0)
    assert set(chunk.ids[3:]) == {tokenizer.eos_token_id}  # SD 1.x pads with the end token
    [sd2_chunk] = chunk_prompt(clip_tokenizer(pad_token="!"), "a cat")
    assert sd2_chunk.ids[3] == tokenizer.eos_token_id and set(sd2_chunk.ids[4:]) == {0}  # "!"


def test_long_prompt_is_cut_into_chunks_of_75() -> None:
    tokenizer = clip_tokenizer()
    text = "word " * 150
    chunks = chunk_prompt(tokenizer, text)
    assert len(chunks) == 2
    assert all(len(c.ids) == 77 and c.ids[76] == tokenizer.eos_token_id for c in chunks)
    assert len(chunk_prompt(tokenizer, "word " * 151)) == 3
    assert len(chunk_prompt(tokenizer, "")) == 1


def test_full_chunk_moves_the_words_after_a_late_comma_to_the_next() -> None:
    tokenizer = clip_tokenizer()
    text = "word " * 70 + ", " + "cat " * 10  # the comma is token 71
    first, second = chunk_prompt(tokenizer, text)
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    cat = tokenizer.convert_tokens_to_ids("cat</w>")
    assert first.ids[71] == comma and first.ids[72] == tokenizer.eos_token_id
    assert second.ids[1:11] == (cat,) * 10
    # Without the backtrack, the chunk fills to 75 tokens.
    first, second = chunk_prompt(tokenizer, text, comma_backtrack=0)
    assert first.ids[72:76] == (cat,) * 4 and second.ids[1:7] == (cat,) * 6
    # A comma further back than 20 tokens does not move anything.
    first, _ = chunk_prompt(tokenizer, "word " * 50 + ", " + "cat " * 40)
    assert first.ids[75] == cat


def test_break_starts_a_new_chunk_and_a_trailing_break_does_nothing() -> None:
    tokenizer = clip_tokenizer()
    assert len(chunk_prompt(tokenizer, "a cat BREAK a dog")) == 2
    assert len(chunk_prompt(tokenizer, "a cat BREAK")) == 1
    assert len(chunk_prompt(tokenizer, "BREAK a cat")) == 2  # an empty first chunk, as A1111
    assert count_prompt_tokens(LONG) > 2 * CHUNK_TOKENS


# --- SD 1.x ----------------------------------------------------------------------------


def test_plain_prompt_is_exactly_diffusers_own_embeddings(sd1: Any) -> None:
    ours = encode_prompts(sd1, "sd1", ["a lighthouse at dusk, fog"], ["blurry, low quality"])
    positive, negative = diffusers_sd1(sd1, "a lighthouse at dusk, fog", "blurry, low quality")
    assert set(ours) == {"prompt_embeds", "negative_prompt_embeds"}
    assert torch.equal(ours["prompt_embeds"], positive)
    assert torch.equal(ours["negative_prompt_embeds"], negative)


def test_clip_skip_two_is_the_penultimate_layer_normalised(sd1: Any) -> None:
    # diffusers' own clip_skip path for SD 1.x reads `text_encoder.text_model`, which
    # transformers 5 no longer has: compute what it means (A1111's and diffusers') by hand.
    ours = encode_prompts(sd1, "sd1", ["a lighthouse"], ["fog"], clip_skip=2)
    encoder = sd1.text_encoder
    norm = getattr(encoder, "text_model", encoder).final_layer_norm
    for text, key in (("a lighthouse", "prompt_embeds"), ("fog", "negative_prompt_embeds")):
        ids = sd1.tokenizer(text, padding="max_length", max_length=77, return_tensors="pt")
        with torch.no_grad():
            hidden = encoder(ids.input_ids, output_hidden_states=True).hidden_states[-2]
            assert torch.equal(ours[key], norm(hidden))
    assert not torch.equal(ours["prompt_embeds"], first_chunk("a lighthouse", sd1)[None])
    with pytest.raises(ValueError, match="clip_skip"):
        encode_prompts(sd1, "sd1", ["a"], [""], clip_skip=0)
    with pytest.raises(ValueError, match="clip_skip"):
        encode_prompts(sd1, "sd1", ["a"], [""], clip_skip=4)  # the tiny encoder has 2 layers


def test_weight_one_and_lora_tags_change_nothing(sd1: Any) -> None:
    plain = first_chunk("a lighthouse at dusk", sd1)
    assert torch.equal(first_chunk("a (lighthouse:1.0) at dusk", sd1), plain)
    assert torch.equal(first_chunk("a lighthouse <lora:style:0.8> at dusk", sd1), plain)


def test_weight_scales_token_states_then_restores_the_mean(sd1: Any) -> None:
    plain = first_chunk("a lighthouse at dusk", sd1)
    weighted = first_chunk("a (lighthouse:1.5) at dusk", sd1)
    assert not torch.equal(weighted, plain)
    # A1111's "Original" emphasis, by hand: token 2 (after BOS and "a") times 1.5, then the
    # whole chunk rescaled to its old mean.
    multipliers = torch.ones(77)
    multipliers[2] = 1.5
    expected = plain * multipliers[:, None]
    expected = expected * (plain.mean() / expected.mean())
    assert torch.allclose(weighted, expected, atol=1e-6)
    assert torch.allclose(weighted.mean(), plain.mean(), atol=1e-6)
    # Down-weighting and nesting take the same path.
    smaller = first_chunk("a [lighthouse] at dusk", sd1)
    nested = first_chunk("a ((lighthouse)) at dusk", sd1)
    assert not torch.equal(smaller, plain) and not torch.equal(nested, weighted)


def test_long_prompt_gives_two_chunks_and_its_tail_matters(sd1: Any) -> None:
    words = "word " * 75
    one = encode_prompts(sd1, "sd1", [words + "a red cat"], ["blurry"])
    other = encode_prompts(sd1, "sd1", [words + "a blue dog"], ["blurry"])
    assert one["prompt_embeds"].shape == (1, 154, 32)
    assert one["negative_prompt_embeds"].shape == (1, 154, 32)
    assert torch.equal(one["prompt_embeds"][:, :77], other["prompt_embeds"][:, :77])
    assert not torch.equal(one["prompt_embeds"][:, 77:], other["prompt_embeds"][:, 77:])
    # The first chunk is the first 75 tokens encoded alone.
    assert torch.equal(one["prompt_embeds"][0, :77], first_chunk(words, sd1))


def test_break_makes_a_new_chunk(sd1: Any) -> None:
    both = encode_prompts(sd1, "sd1", ["a red cat BREAK a blue dog"], [""])["prompt_embeds"][0]
    assert both.shape == (154, 32)
    assert torch.equal(both[:77], first_chunk("a red cat", sd1))
    assert torch.equal(both[77:], first_chunk("a blue dog", sd1))


def test_shorter_prompts_are_padded_with_the_empty_prompt(sd1: Any) -> None:
    out = encode_prompts(sd1, "sd1", [LONG, "a cat"], ["blurry", ""])
    chunks = out["prompt_embeds"].shape[1] // 77
    assert chunks >= 3
    assert out["prompt_embeds"].shape == out["negative_prompt_embeds"].shape == (2, 77 * chunks, 32)
    empty = first_chunk("", sd1)
    negative = out["negative_prompt_embeds"][0]
    assert torch.equal(negative[:77], first_chunk("blurry", sd1))
    for i in range(1, chunks):
        assert torch.equal(negative[77 * i : 77 * (i + 1)], empty)
        assert torch.equal(out["prompt_embeds"][1, 77 * i : 77 * (i + 1)], empty)
    # A prompt's embeddings do not depend on the others in its call.
    assert torch.equal(out["prompt_embeds"][1, :77], first_chunk("a cat", sd1))


def test_negative_longer_than_positive_pads_the_positive(sd1: Any) -> None:
    out = encode_prompts(sd1, "sd1", ["a cat"], [LONG])
    assert out["prompt_embeds"].shape == out["negative_prompt_embeds"].shape
    assert out["prompt_embeds"].shape[1] > 77


def test_mismatched_lists_are_refused(sd1: Any) -> None:
    with pytest.raises(ValueError):
        encode_prompts(sd1, "sd1", ["a", "b"], ["c"])
    with pytest.raises(ValueError):
        encode_prompts(sd1, "sd1", [], [])


def test_textual_inversion_tokens_are_recognised(tiny_model: TinyModel) -> None:
    pipe = load_pipeline(ModelSpec("tiny", str(tiny_model.single_file), config=tiny_model.folder))
    before = first_chunk("a photo of <shiny-thing>", pipe)
    vectors = torch.randn(2, pipe.text_encoder.config.hidden_size, generator=torch.manual_seed(1))
    pipe.load_textual_inversion({"<shiny-thing>": vectors}, token="<shiny-thing>")
    prompt = "a photo of <shiny-thing>, <shiny-thing> in the sun"
    ours = encode_prompts(pipe, "sd1", [prompt], ["blurry"])
    positive, _ = diffusers_sd1(pipe, prompt, "blurry")
    assert torch.equal(ours["prompt_embeds"], positive)
    assert not torch.equal(first_chunk("a photo of <shiny-thing>", pipe), before)
    assert torch.equal(
        first_chunk("a photo of (<shiny-thing>:1.0)", pipe),
        first_chunk("a photo of <shiny-thing>", pipe),
    )
    # Two vectors: the token stands for two positions, as in diffusers.
    added = pipe.tokenizer.convert_tokens_to_ids(["<shiny-thing>", "<shiny-thing>_1"])
    [chunk] = chunk_prompt(
        pipe.tokenizer,
        "<shiny-thing>",
        convert=lambda t: pipe.maybe_convert_prompt(t, pipe.tokenizer),
    )
    assert list(chunk.ids[1:3]) == added and chunk.ids[3] == pipe.tokenizer.eos_token_id


def test_embeddings_generate_the_same_image_as_the_plain_prompt(sd1: Any) -> None:
    def run(**arguments: Any) -> np.ndarray:
        images = sd1(
            num_inference_steps=2,
            height=64,
            width=64,
            generator=torch.Generator("cpu").manual_seed(7),
            output_type="np",
            **arguments,
        ).images
        return np.asarray(images)

    plain = run(prompt=["a lighthouse"], negative_prompt=["fog"])
    ours = run(**encode_prompts(sd1, "sd1", ["a lighthouse"], ["fog"]))
    assert ours.shape == (1, 64, 64, 3) and np.array_equal(ours, plain)
    long = run(**encode_prompts(sd1, "sd1", [LONG + " (sunset:1.3) BREAK sea"], ["fog"]))
    assert long.shape == (1, 64, 64, 3) and np.isfinite(long).all()
    assert not np.array_equal(long, plain)


# --- SDXL ------------------------------------------------------------------------------


def test_sdxl_plain_prompt_is_exactly_diffusers_own_embeddings(sdxl: Any) -> None:
    ours = encode_prompts(sdxl, "sdxl", ["a lighthouse at dusk"], ["blurry"])
    positive, negative, pooled, negative_pooled = diffusers_sdxl(
        sdxl, "a lighthouse at dusk", "blurry"
    )
    assert torch.equal(ours["prompt_embeds"], positive)
    assert torch.equal(ours["negative_prompt_embeds"], negative)
    assert torch.equal(ours["pooled_prompt_embeds"], pooled)
    assert torch.equal(ours["negative_pooled_prompt_embeds"], negative_pooled)
    assert ours["prompt_embeds"].shape == (1, 77, 96)  # 32 + 64: both encoders


def test_sdxl_clip_skip_counts_from_the_penultimate_layer(sdxl: Any) -> None:
    ours = encode_prompts(sdxl, "sdxl", ["a lighthouse"], ["fog"], clip_skip=2)
    positive, _, pooled, _ = diffusers_sdxl(sdxl, "a lighthouse", "fog", clip_skip=1)
    assert torch.equal(ours["prompt_embeds"], positive)
    assert torch.equal(ours["pooled_prompt_embeds"], pooled)


def test_sdxl_empty_negative_is_zeros(sdxl: Any) -> None:
    ours = encode_prompts(sdxl, "sdxl", ["a lighthouse"], [" <lora:x:1> "])
    _, negative, _, negative_pooled = diffusers_sdxl(sdxl, "a lighthouse", None)
    assert not ours["negative_prompt_embeds"].any()
    assert torch.equal(ours["negative_prompt_embeds"], negative)
    assert torch.equal(ours["negative_pooled_prompt_embeds"], negative_pooled)


def test_sdxl_long_weighted_prompt(sdxl: Any) -> None:
    words = "word " * 75
    one = encode_prompts(sdxl, "sdxl", [words + "a (red:1.4) cat"], ["blurry"])
    other = encode_prompts(sdxl, "sdxl", [words + "a blue dog"], ["blurry"])
    assert one["prompt_embeds"].shape == one["negative_prompt_embeds"].shape == (1, 154, 96)
    assert torch.equal(one["prompt_embeds"][:, :77], other["prompt_embeds"][:, :77])
    assert not torch.equal(one["prompt_embeds"][:, 77:], other["prompt_embeds"][:, 77:])
    # The pooled embedding comes from the first chunk only.
    assert torch.equal(one["pooled_prompt_embeds"], other["pooled_prompt_embeds"])
    _, _, pooled, _ = diffusers_sdxl(sdxl, words, "blurry")
    assert torch.equal(one["pooled_prompt_embeds"], pooled)


def test_sdxl_embeddings_generate_an_image(sdxl: Any) -> None:
    arguments = encode_prompts(sdxl, "sdxl", [LONG + " BREAK (sea:1.2)"], ["fog"])
    images = sdxl(
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator("cpu").manual_seed(7),
        output_type="np",
        **arguments,
    ).images
    assert np.asarray(images).shape == (1, 64, 64, 3) and np.isfinite(images).all()


def test_sd2_pads_with_its_own_token_and_matches_diffusers(tiny_model_sd2: TinyModel) -> None:
    spec = ModelSpec("v2", str(tiny_model_sd2.single_file), config=tiny_model_sd2.folder)
    pipe = load_pipeline(spec)
    ours = encode_prompts(pipe, "sd2", ["a lighthouse at dusk"], ["blurry"])
    positive, negative = diffusers_sd1(pipe, "a lighthouse at dusk", "blurry")
    assert torch.equal(ours["prompt_embeds"], positive)
    assert torch.equal(ours["negative_prompt_embeds"], negative)
    assert encode_prompts(pipe, "sd2", [LONG], [""])["prompt_embeds"].shape[1] % 77 == 0
