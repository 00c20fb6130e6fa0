"""Where the prompt language meets requests: LoRA names and families checked before a job is
queued, the `lora` option as a prompt tag, styles, and the batch key."""

from __future__ import annotations

import pytest

from bot.cogs.imagine import lora_tag
from inference.errors import InvalidRequestError
from inference.requests import RequestOptions, resolve_request
from inference.types import LoraSpec, ModelInfo, StyleSpec

SD15 = ModelInfo("sd15", "sd1", "base", "folder", 512, 25, 7.0, "Euler a")
LORAS = {
    "detail": LoraSpec("detail", "/l/detail.safetensors", "sd1"),
    "xl_only": LoraSpec("xl_only", "/l/xl.safetensors", "sdxl"),
    "any": LoraSpec("any", "/l/any.safetensors"),
}


def test_loras_come_from_the_prompt_and_count_in_the_batch_key() -> None:
    request = resolve_request(
        RequestOptions("a (fox:1.2) <lora:detail:0.6>", negative_prompt="<lora:any>"),
        SD15,
        loras=LORAS,
    )
    assert request.prompt == "a (fox:1.2) <lora:detail:0.6>"  # kept as typed
    assert request.loras == (("detail", 0.6), ("any", 1.0))
    plain = resolve_request(RequestOptions("a (fox:1.2)", seed=request.seed), SD15)
    assert plain.batch_key() != request.batch_key()


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("a fox <lora:nope:1>", "unknown LoRA 'nope'; available: any, detail, xl_only"),
        ("a fox <lora:xl_only:1>", "xl_only is a LoRA for sdxl models; sd15 is sd1"),
    ],
)
def test_unknown_or_wrong_family_loras_are_refused(prompt: str, message: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        resolve_request(RequestOptions(prompt), SD15, loras=LORAS)
    assert caught.value.field == "lora" and message in str(caught.value)


def test_a_long_weighted_prompt_is_accepted() -> None:
    prompt = ", ".join(f"(word{i}:1.1)" for i in range(100))  # 400+ tokens, 1,390 chars
    assert resolve_request(RequestOptions(prompt), SD15).prompt == prompt


def test_the_lora_option_becomes_the_tag_users_write() -> None:
    assert lora_tag("detail") == "<lora:detail:1>"
    assert lora_tag(" detail : 0.6 ") == "<lora:detail:0.6>"
    for bad in ("de tail", "a:b:c", "<lora:x>", ""):
        with pytest.raises(InvalidRequestError, match="lora"):
            lora_tag(bad)


def test_styles_wrap_or_append_and_none_opts_out() -> None:
    styles = {"film": StyleSpec("film", "film still of {prompt}", "cartoon")}
    styled = resolve_request(
        RequestOptions("a fox", negative_prompt="blur", style="film"), SD15, styles=styles
    )
    assert (styled.prompt, styled.negative_prompt) == ("film still of a fox", "blur, cartoon")
    assert StyleSpec("s", "pencil sketch").apply("a fox", "") == ("a fox, pencil sketch", "")
    plain = resolve_request(RequestOptions("a fox", style="None"), SD15, styles=styles)
    assert plain.prompt == "a fox"
    with pytest.raises(InvalidRequestError, match="unknown style 'x'; available: film"):
        resolve_request(RequestOptions("a fox", style="x"), SD15, styles=styles)
