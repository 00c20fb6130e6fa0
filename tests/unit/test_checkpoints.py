"""Checkpoint headers, family/variant detection, refusals and the shipped configs.

Checkpoints here are written by `write_fake_checkpoint`: real key names and full-size shapes,
but only the header is on disk, so no test allocates a real model.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
from pathlib import Path

import pytest

from inference.checkpoints import CONFIGS_DIR, variant_from_text
from inference.errors import CheckpointError, HubUnavailableError, UnsafeCheckpointError
from inference.ldm_keys import KeyNamer
from inference.models import classify_source, inspect_model
from inference.testing import write_fake_checkpoint
from inference.tokens import clip_tokenizer
from inference.types import ModelSpec

U = "model.diffusion_model."
V = "first_stage_model."


def _unet(cross: int, levels: int, sdxl: bool = False) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {
        U + "input_blocks.0.0.weight": (320, 4, 3, 3),
        U + "out.2.weight": (4, 320, 3, 3),
        U + "time_embed.0.weight": (1280, 320),
        U + "middle_block.0.in_layers.2.weight": (1280, 1280, 3, 3),
    }
    shapes |= {U + f"input_blocks.{i}.0.in_layers.0.bias": (320,) for i in range(1, levels)}
    attn_block, width = (4, 640) if sdxl else (1, 320)
    shapes[U + f"input_blocks.{attn_block}.1.transformer_blocks.0.attn2.to_k.weight"] = (
        width,
        cross,
    )
    if sdxl:
        shapes[U + "label_emb.0.0.weight"] = (1280, 2816)
    return shapes


VAE = {
    V + "encoder.conv_in.weight": (128, 3, 3, 3),
    V + "decoder.conv_out.weight": (3, 128, 3, 3),
    V + "encoder.conv_out.weight": (8, 512, 3, 3),
    V + "post_quant_conv.weight": (4, 4, 1, 1),
}


def _clip(prefix: str, hidden: int, layers: int) -> dict[str, tuple[int, ...]]:
    t = prefix + "text_model."
    shapes: dict[str, tuple[int, ...]] = {
        t + "embeddings.token_embedding.weight": (49408, hidden),
        t + "embeddings.position_embedding.weight": (77, hidden),
    }
    return shapes | {t + f"encoder.layers.{i}.layer_norm1.weight": (hidden,) for i in range(layers)}


def _openclip(prefix: str, hidden: int, layers: int, proj: int | None) -> dict:
    shapes: dict[str, tuple[int, ...]] = {
        prefix + "token_embedding.weight": (49408, hidden),
        prefix + "positional_embedding": (77, hidden),
    }
    shapes |= {prefix + f"transformer.resblocks.{i}.ln_1.weight": (hidden,) for i in range(layers)}
    if proj:
        shapes[prefix + "text_projection"] = (hidden, proj)
    return shapes


def layout(family: str) -> dict[str, tuple[int, ...]]:
    """Enough of a real checkpoint's header to pass the checks against the shipped configs."""
    if family == "sd1":
        return _unet(768, 12) | VAE | _clip("cond_stage_model.transformer.", 768, 12)
    if family == "sd2":
        return _unet(1024, 12) | VAE | _openclip("cond_stage_model.model.", 1024, 24, 1024)
    return (
        _unet(2048, 9, sdxl=True)
        | VAE
        | _clip("conditioner.embedders.0.transformer.", 768, 12)
        | _openclip("conditioner.embedders.1.model.", 1280, 32, 1280)
    )


def fake(tmp_path: Path, name: str, shapes: dict, **kwargs: object) -> Path:
    return write_fake_checkpoint(tmp_path / name, shapes, **kwargs)  # type: ignore[arg-type]


# --- detection -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "native", "steps", "guidance"),
    [("sd1", 512, 25, 7.0), ("sd2", 768, 25, 7.0), ("sdxl", 1024, 30, 6.0)],
)
def test_detects_family_and_defaults(
    tmp_path: Path, family: str, native: int, steps: int, guidance: float
) -> None:
    path = fake(tmp_path, f"model-{family}.safetensors", layout(family))
    info = inspect_model(ModelSpec(name="m", source=str(path)))
    assert (info.family, info.variant, info.source_kind) == (family, "base", "single_file")
    assert (info.native_size, info.default_steps, info.default_guidance) == (
        native,
        steps,
        guidance,
    )
    assert info.default_sampler == "DPM++ 2M Karras"


@pytest.mark.parametrize(
    ("filename", "metadata", "native"),
    [
        ("v2-1_512-ema-pruned.safetensors", None, 512),
        ("sd21-base.safetensors", None, 512),
        ("sd21.safetensors", {"modelspec.architecture": "stable-diffusion-v2-512"}, 512),
        ("sd21.safetensors", {"modelspec.architecture": "stable-diffusion-v2-768-v"}, 768),
        ("sd21.safetensors", None, 768),  # no clue at all: SD 2.1's flagship is 768-v
    ],
)
def test_sd2_prediction_type_sets_native_size(
    tmp_path: Path, filename: str, metadata: dict | None, native: int
) -> None:
    path = fake(tmp_path, filename, layout("sd2"), metadata=metadata)
    assert inspect_model(ModelSpec(name="m", source=str(path))).native_size == native


@pytest.mark.parametrize(("spread", "native"), [(0.2, 768), (0.01, 512)])
def test_sd2_prediction_type_from_weights(tmp_path: Path, spread: float, native: int) -> None:
    probe = U + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
    values = [spread * (1 if i % 2 else -1) for i in range(320)]
    path = fake(
        tmp_path,
        "sd2-finetune.safetensors",
        layout("sd2") | {probe: (320,)},
        values={probe: values},
    )
    assert inspect_model(ModelSpec(name="m", source=str(path))).native_size == native


@pytest.mark.parametrize(
    ("filename", "metadata", "spec_variant", "expected"),
    [
        ("dreamshaperXL_turboDPMSDE.safetensors", None, None, (4, 0.0, "Euler a", "turbo")),
        (
            "juggernaut.safetensors",
            {"modelspec.title": "Juggernaut LCM"},
            None,
            (6, 1.5, "LCM", "lcm"),
        ),
        ("sdxl_lightning_4step.safetensors", None, None, (4, 0.0, "Euler a", "turbo")),
        ("dreamshaperXL_turbo.safetensors", None, "base", (30, 6.0, "DPM++ 2M Karras", "base")),
        ("realcmodel.safetensors", None, None, (30, 6.0, "DPM++ 2M Karras", "base")),
    ],
)
def test_variant_defaults(
    tmp_path: Path,
    filename: str,
    metadata: dict | None,
    spec_variant: str | None,
    expected: tuple[int, float, str, str],
) -> None:
    path = fake(tmp_path, filename, layout("sdxl"), metadata=metadata)
    spec = ModelSpec(name="m", source=str(path), variant=spec_variant)  # type: ignore[arg-type]
    info = inspect_model(spec)
    got = (info.default_steps, info.default_guidance, info.default_sampler, info.variant)
    assert got == expected


def test_variant_from_text() -> None:
    assert variant_from_text("LCM_Dreamshaper_v7") == "lcm"
    assert variant_from_text("sd_xl_turbo_1.0_fp16") == "turbo"
    assert variant_from_text("realcmodel", "sd_xl_base_1.0") is None


def test_family_override_that_contradicts_the_file_is_an_error(tmp_path: Path) -> None:
    path = fake(tmp_path, "xl.safetensors", layout("sdxl"))
    with pytest.raises(CheckpointError, match="family"):
        inspect_model(ModelSpec(name="m", source=str(path), family="sd1"))


# --- refusals and broken files ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickle_checkpoints_are_refused(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UnsafeCheckpointError) as err:
        inspect_model(ModelSpec(name="m", source=str(path)))
    assert "arbitrary code" in str(err.value)
    assert ".safetensors" in str(err.value)


class _Evil:
    """Unpickling this touches a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def test_allowed_pickle_still_loads_weights_only(tmp_path: Path) -> None:
    import torch

    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"foo.weight": torch.zeros(2)}}, good)
    # Allowed: read, then judged on its keys like any checkpoint.
    with pytest.raises(CheckpointError, match="does not recognise") as err:
        inspect_model(ModelSpec(name="m", source=str(good)), allow_pickle=True)
    assert not isinstance(err.value, UnsafeCheckpointError)

    evil = tmp_path / "evil.ckpt"
    marker = tmp_path / "code-ran"
    evil.write_bytes(pickle.dumps({"state_dict": _Evil(marker)}, protocol=2))
    with pytest.raises(CheckpointError, match="tensors only"):
        inspect_model(ModelSpec(name="m", source=str(evil)), allow_pickle=True)
    assert not marker.exists()


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "model.safetensors"
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        inspect_model(ModelSpec(name="m", source=str(path)))


def test_truncated_file(tmp_path: Path) -> None:
    path = fake(tmp_path, "cut.safetensors", {"a": (4, 4)}, values={"a": [1.0] * 16})
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        inspect_model(ModelSpec(name="m", source=str(path)))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty or truncated"),
        (struct.pack("<Q", 10_000) + b"{}", "truncated"),
        (struct.pack("<Q", 6) + b"{nope}", "corrupt"),
        (struct.pack("<Q", 4) + b"[12]", "corrupt"),
        (b"\x93\x8a\xff\x00garbage!" * 100, "not a readable"),
        (b"<!DOCTYPE html><html>Sign in to download</html>" * 10, "web page"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 42\n", "git lfs pull"),
    ],
)
def test_broken_files(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        inspect_model(ModelSpec(name="m", source=str(path)))


def test_header_sizes_that_disagree_with_shapes(tmp_path: Path) -> None:
    header = json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(CheckpointError, match="corrupt"):
        inspect_model(ModelSpec(name="m", source=str(path)))


def test_unknown_layout_lists_recognised_ones(tmp_path: Path) -> None:
    path = fake(tmp_path, "odd.safetensors", {"blocks.0.weight": (4,), "head.bias": (2,)})
    with pytest.raises(CheckpointError) as err:
        inspect_model(ModelSpec(name="m", source=str(path)))
    message = str(err.value)
    for needle in ("SD 1.x", "SD 2.x", "SDXL", "config", "blocks.0.weight"):
        assert needle in message


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        ({"lora_unet_down_blocks_0.lora_down.weight": (4, 320)}, "LoRA"),
        (_unet(768, 12) | VAE, "no text encoder"),
        (_openclip("conditioner.embedders.0.model.", 1280, 2, 1280) | _unet(1280, 9), "refiner"),
        (_unet(768, 12) | _clip("cond_stage_model.transformer.", 768, 12), "no VAE"),
        (
            {"encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_out.weight": (3, 128, 3, 3)},
            "VAE on its own",
        ),
    ],
)
def test_not_a_full_model(tmp_path: Path, shapes: dict, match: str) -> None:
    path = fake(tmp_path, "part.safetensors", shapes)
    with pytest.raises(CheckpointError, match=match):
        inspect_model(ModelSpec(name="m", source=str(path)))


def test_shapes_that_do_not_match_the_shipped_config(tmp_path: Path) -> None:
    shapes = layout("sd1") | {U + "input_blocks.0.0.weight": (32, 4, 3, 3)}
    path = fake(tmp_path, "small.safetensors", shapes)
    with pytest.raises(CheckpointError) as err:
        inspect_model(ModelSpec(name="m", source=str(path)))
    message = str(err.value)
    assert "[32, 4, 3, 3]" in message and "[320, 4, 3, 3]" in message
    assert "shipped SD 1.x" in message and "config" in message


def test_text_encoder_width_mismatch(tmp_path: Path) -> None:
    shapes = layout("sdxl") | _openclip("conditioner.embedders.1.model.", 1024, 32, 1024)
    path = fake(tmp_path, "xl.safetensors", shapes)
    with pytest.raises(CheckpointError, match="second text encoder"):
        inspect_model(ModelSpec(name="m", source=str(path)))


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_inpainting_checkpoints_pass_the_shipped_architecture(tmp_path: Path, family: str) -> None:
    """SD 1.5 / SD 2 / SDXL inpainting: the family's architecture with a 9-channel UNet input."""
    shapes = layout(family) | {U + "input_blocks.0.0.weight": (320, 9, 3, 3)}
    path = fake(tmp_path, f"{family}-inpainting.safetensors", shapes)
    info = inspect_model(ModelSpec(name="m", source=str(path)))
    assert (info.family, info.inpainting) == (family, True)
    plain = fake(tmp_path, f"{family}.safetensors", layout(family))
    assert inspect_model(ModelSpec(name="m", source=str(plain))).inpainting is False


def test_other_unet_input_widths_are_named(tmp_path: Path) -> None:
    shapes = layout("sd1") | {U + "input_blocks.0.0.weight": (320, 8, 3, 3)}
    path = fake(tmp_path, "instruct-pix2pix.safetensors", shapes)
    with pytest.raises(CheckpointError) as err:
        inspect_model(ModelSpec(name="m", source=str(path)))
    message = str(err.value)
    assert "[320, 8, 3, 3]" in message and "8 input channels" in message
    assert "inpainting (9)" in message


def test_config_folder_must_be_diffusers_layout(tmp_path: Path) -> None:
    path = fake(tmp_path, "m.safetensors", layout("sd1"))
    with pytest.raises(CheckpointError, match=r"model_index\.json"):
        inspect_model(ModelSpec(name="m", source=str(path), config=tmp_path))


def test_config_folder_of_another_family(tmp_path: Path) -> None:
    path = fake(tmp_path, "m.safetensors", layout("sd1"))
    with pytest.raises(CheckpointError, match="StableDiffusionXLPipeline"):
        inspect_model(ModelSpec(name="m", source=str(path), config=CONFIGS_DIR / "sdxl"))


# --- sources ---------------------------------------------------------------------------------


def test_classify_source(tmp_path: Path) -> None:
    assert classify_source("stabilityai/sdxl-turbo") == ("hub", "stabilityai/sdxl-turbo")
    assert classify_source(str(CONFIGS_DIR / "sd1")) == ("folder", CONFIGS_DIR / "sd1")
    with pytest.raises(CheckpointError, match="does not exist"):
        classify_source("models/missing.safetensors")  # shaped like org/name, but a file
    with pytest.raises(CheckpointError, match=r"model_index\.json"):
        classify_source(str(tmp_path))


def test_hub_id_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError) as err:
        inspect_model(ModelSpec(name="m", source="imagine-bot-tests/no-such-model"))
    message = str(err.value)
    assert "imagine-bot-tests/no-such-model" in message
    assert "Download" in message and "source" in message


# --- shipped configs and tokenizer -----------------------------------------------------------


def _json(*parts: str) -> dict:
    return json.loads(CONFIGS_DIR.joinpath(*parts).read_text())


@pytest.mark.parametrize(
    ("family", "pipeline", "cross", "hidden", "native"),
    [
        ("sd1", "StableDiffusionPipeline", 768, 768, 512),
        ("sd2", "StableDiffusionPipeline", 1024, 1024, 768),
        ("sdxl", "StableDiffusionXLPipeline", 2048, 768, 1024),
    ],
)
def test_shipped_configs(family: str, pipeline: str, cross: int, hidden: int, native: int) -> None:
    index = _json(family, "model_index.json")
    assert index["_class_name"] == pipeline
    assert index.get("safety_checker", [None])[0] is None  # never loaded
    unet = _json(family, "unet", "config.json")
    assert unet["cross_attention_dim"] == cross
    assert unet["sample_size"] * 8 == native
    assert _json(family, "text_encoder", "config.json")["hidden_size"] == hidden
    assert _json(family, "vae", "config.json")["block_out_channels"] == [128, 256, 512, 512]
    assert _json(family, "scheduler", "scheduler_config.json")["beta_end"] == 0.012
    for sub, spec in index.items():
        if isinstance(spec, list) and spec[0] is not None:
            assert CONFIGS_DIR.joinpath(family, sub).is_dir(), sub
    tok = _json(family, "tokenizer", "tokenizer_config.json")
    assert tok["model_max_length"] == 77
    assert tok["pad_token"] == ("!" if family == "sd2" else "<|endoftext|>")


def test_shipped_sd2_and_sdxl_specifics() -> None:
    sd2_text = _json("sd2", "text_encoder", "config.json")
    assert (sd2_text["num_hidden_layers"], sd2_text["hidden_act"]) == (23, "gelu")
    assert _json("sd2", "scheduler", "scheduler_config.json")["prediction_type"] == "v_prediction"
    text_2 = _json("sdxl", "text_encoder_2", "config.json")
    assert text_2["architectures"] == ["CLIPTextModelWithProjection"]
    assert (text_2["hidden_size"], text_2["projection_dim"], text_2["num_hidden_layers"]) == (
        1280,
        1280,
        32,
    )
    assert _json("sdxl", "tokenizer_2", "tokenizer_config.json")["pad_token"] == "!"
    unet = _json("sdxl", "unet", "config.json")
    assert unet["projection_class_embeddings_input_dim"] == 6 * 256 + 1280


def test_clip_tokenizer_is_the_real_one() -> None:
    tok = clip_tokenizer()
    assert len(tok) == 49408 and tok.model_max_length == 77
    ids = tok("a photo of an astronaut riding a horse on mars").input_ids
    # The ids openai/clip-vit-large-patch14 gives for this prompt.
    assert ids == [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 49407]
    padded = tok("hi", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[-1] == 49407
    assert (
        clip_tokenizer(pad_token="!")("hi", padding="max_length", max_length=77).input_ids[-1] == 0
    )


# --- original key names --------------------------------------------------------------------


def test_key_names_match_real_checkpoints() -> None:
    sd1_unet = KeyNamer("sd1", "unet", _json("sd1", "unet", "config.json"))
    assert (
        sd1_unet("down_blocks.0.resnets.0.norm1.weight")
        == U + "input_blocks.1.0.in_layers.0.weight"
    )
    assert sd1_unet("down_blocks.0.downsamplers.0.conv.weight") == U + "input_blocks.3.0.op.weight"
    assert sd1_unet("up_blocks.0.upsamplers.0.conv.bias") == U + "output_blocks.2.1.conv.bias"
    assert sd1_unet("up_blocks.1.upsamplers.0.conv.bias") == U + "output_blocks.5.2.conv.bias"
    assert (
        sd1_unet("up_blocks.3.attentions.2.proj_out.weight")
        == U + "output_blocks.11.1.proj_out.weight"
    )
    assert (
        sd1_unet("mid_block.resnets.1.time_emb_proj.bias") == U + "middle_block.2.emb_layers.1.bias"
    )
    sdxl_unet = KeyNamer("sdxl", "unet", _json("sdxl", "unet", "config.json"))
    assert sdxl_unet("add_embedding.linear_2.weight") == U + "label_emb.0.2.weight"
    vae = KeyNamer("sd1", "vae", _json("sd1", "vae", "config.json"))
    assert (
        vae("decoder.up_blocks.0.resnets.2.conv1.weight") == V + "decoder.up.3.block.2.conv1.weight"
    )
    assert (
        vae("encoder.down_blocks.1.resnets.0.conv_shortcut.bias")
        == V + "encoder.down.1.block.0.nin_shortcut.bias"
    )
    assert (
        vae("encoder.mid_block.attentions.0.to_out.0.weight")
        == V + "encoder.mid.attn_1.proj_out.weight"
    )
    assert (
        vae("decoder.mid_block.attentions.0.group_norm.bias") == V + "decoder.mid.attn_1.norm.bias"
    )
    openclip = KeyNamer("sdxl", "text_encoder_2")
    p = "conditioner.embedders.1.model."
    assert (
        openclip("text_model.encoder.layers.3.self_attn.k_proj.bias")
        == p + "transformer.resblocks.3.attn.in_proj_bias"
    )
    assert (
        openclip("text_model.encoder.layers.0.mlp.fc2.weight")
        == p + "transformer.resblocks.0.mlp.c_proj.weight"
    )
    assert openclip("text_projection.weight") == p + "text_projection"
    clip = KeyNamer("sd1", "text_encoder")
    assert (
        clip("final_layer_norm.bias")
        == "cond_stage_model.transformer.text_model.final_layer_norm.bias"
    )


def test_materialised_vocab_files_give_the_same_tokenizer(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    from inference.tokens import write_clip_vocab

    folder = write_clip_vocab(tmp_path / "tok")
    from_files = CLIPTokenizer.from_pretrained(folder, model_max_length=77)
    prompt = "masterpiece, 1girl, cyberpunk city at night, neon lights, rain"
    assert from_files(prompt).input_ids == clip_tokenizer()(prompt).input_ids
    assert len(from_files) == 49408
