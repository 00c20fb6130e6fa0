"""LoRAs and textual-inversion embeddings on the tiny SD 1.x and SDXL models: real diffusers
loading (Kohya and diffusers layouts), exact switching between sets, family checks, hashes."""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from inference.errors import CheckpointError, InvalidRequestError, UnsafeCheckpointError
from inference.loras import AddOns, inspect_lora, lora_hash
from inference.models import load_pipeline
from inference.testing import TinyModel
from inference.testing_addons import (
    random_lora_state_dict,
    save_random_lora,
    save_tiny_embedding,
    save_tiny_lora,
    tiny_lora_state_dict,
)
from inference.types import EmbeddingSpec, LoraSpec, ModelFamily, ModelSpec

PROMPT = "a lighthouse at dusk"


@dataclass
class Setup:
    family: ModelFamily
    model: ModelSpec
    loras: dict[str, LoraSpec]
    embeddings: dict[str, EmbeddingSpec]
    fresh: Any  # a pipeline that never had a LoRA or an embedding

    def pipeline(self) -> Any:
        return load_pipeline(self.model)

    def addons(self, pipe: Any | None = None, **options: Any) -> AddOns:
        return AddOns(
            pipe if pipe is not None else self.pipeline(),
            self.family,
            self.loras,
            self.embeddings,
            model="tiny",
            **options,
        )


def _setup(tiny: TinyModel, family: ModelFamily, directory: Path) -> Setup:
    loras = {
        "alpha": save_tiny_lora(directory / "alpha.safetensors", family, seed=1),
        "beta": save_tiny_lora(directory / "beta.safetensors", family, seed=2, rank=2),
        "alpha-peft": save_tiny_lora(
            directory / "alpha-peft.safetensors", family, seed=1, format="diffusers"
        ),
        "unet-only": save_tiny_lora(directory / "unet.safetensors", family, text_encoders=False),
    }
    embeddings = {
        "tinyemb": save_tiny_embedding(directory / "tinyemb.safetensors", family, seed=1),
        "otheremb": save_tiny_embedding(directory / "otheremb.safetensors", family, seed=2),
    }
    model = ModelSpec("tiny", str(tiny.folder))
    return Setup(
        family,
        model,
        {name: LoraSpec(name, str(path)) for name, path in loras.items()},
        {name: EmbeddingSpec(name, str(path)) for name, path in embeddings.items()},
        load_pipeline(model),
    )


@pytest.fixture(scope="module")
def sd1(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return _setup(tiny_model, "sd1", tmp_path_factory.mktemp("addons-sd1"))


@pytest.fixture(scope="module")
def sdxl(tiny_model_sdxl: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return _setup(tiny_model_sdxl, "sdxl", tmp_path_factory.mktemp("addons-sdxl"))


@pytest.fixture(params=["sd1", "sdxl"])
def setup(request: pytest.FixtureRequest) -> Setup:
    return request.getfixturevalue(request.param)


def image(pipe: Any, prompt: str = PROMPT, seed: int = 7) -> np.ndarray:
    """2 steps at 64x64 with a fixed CPU generator; the decoded floats, before any rounding."""
    with torch.inference_mode():
        output = pipe(
            prompt=[prompt],
            negative_prompt=["fog"],
            num_inference_steps=2,
            guidance_scale=7.0,
            width=64,
            height=64,
            generator=[torch.Generator("cpu").manual_seed(seed)],
            output_type="np",
        )
    return np.asarray(output.images[0])


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


def differ(a: np.ndarray, b: np.ndarray) -> bool:
    return float(np.abs(a - b).mean()) > 1e-3


# --- LoRAs ---------------------------------------------------------------------------------


def test_weight_zero_and_no_lora_are_byte_identical_to_a_pipeline_without_any(
    setup: Setup,
) -> None:
    addons = setup.addons()
    base = image(setup.fresh)
    addons.apply([("alpha", 1.0)])
    assert differ(image(addons.pipe), base)
    addons.apply([("alpha", 0.0)])
    assert addons.active == ()
    assert same(image(addons.pipe), base)
    addons.apply([("alpha", 1.0), ("beta", 0.0)])  # a zero-weight LoRA beside another one
    with_beta_zero = image(addons.pipe)
    addons.apply([("alpha", 1.0)])
    assert same(image(addons.pipe), with_beta_zero)


def test_no_lora_after_loras_leaks_nothing(setup: Setup) -> None:
    addons = setup.addons()
    addons.apply([("alpha", 0.8), ("beta", -0.5)])
    first = image(addons.pipe)
    addons.apply([])
    assert same(image(addons.pipe), image(setup.fresh))
    assert same(image(addons.pipe, seed=8), image(setup.fresh, seed=8))
    addons.apply([("beta", -0.5), ("alpha", 0.8)])  # the same set again, in another order
    assert same(image(addons.pipe), first)
    assert addons.loaded == ("alpha", "beta")


def test_weights_scale_the_effect_and_sets_combine(setup: Setup) -> None:
    addons = setup.addons()
    base = image(setup.fresh)
    results = {}
    for key, loras in {
        "alpha 1": [("alpha", 1.0)],
        "alpha 0.5": [("alpha", 0.5)],
        "beta 1": [("beta", 1.0)],
        "both": [("alpha", 1.0), ("beta", 1.0)],
    }.items():
        addons.apply(loras)
        results[key] = image(addons.pipe)
    for key, result in results.items():
        assert differ(result, base), key
    assert differ(results["alpha 1"], results["alpha 0.5"])
    assert differ(results["both"], results["alpha 1"])
    assert differ(results["both"], results["beta 1"])
    # A name given twice counts once with the weights summed.
    addons.apply([("alpha", 0.25), ("alpha", 0.25)])
    assert addons.active == (("alpha", 0.5),)
    assert same(image(addons.pipe), results["alpha 0.5"])


def test_kohya_and_diffusers_layouts_of_the_same_lora_give_the_same_image(setup: Setup) -> None:
    addons = setup.addons()
    addons.apply([("alpha", 1.0)])
    kohya = image(addons.pipe)
    addons.apply([("alpha-peft", 1.0)])
    peft = image(addons.pipe)
    assert np.abs(kohya - peft).max() < 1e-5
    assert differ(peft, image(setup.fresh))


def test_kohya_alpha_scales_the_update(sd1: Setup, tmp_path: Path) -> None:
    # alpha = rank / 2 halves the update: the same as the alpha = rank file at weight 0.5.
    half = save_tiny_lora(tmp_path / "half.safetensors", "sd1", seed=1, alpha=2.0)
    addons = AddOns(sd1.pipeline(), "sd1", {**sd1.loras, "half": LoraSpec("half", str(half))})
    addons.apply([("half", 1.0)])
    by_alpha = image(addons.pipe)
    addons.apply([("alpha", 0.5)])
    assert np.abs(by_alpha - image(addons.pipe)).max() < 1e-5


def test_a_lora_without_text_encoder_layers_mixes_with_one_that_has_them(setup: Setup) -> None:
    addons = setup.addons()
    addons.apply([("unet-only", 1.0)])
    alone = image(addons.pipe)
    assert differ(alone, image(setup.fresh))
    addons.apply([("unet-only", 1.0), ("alpha", 1.0)])
    assert differ(image(addons.pipe), alone)
    addons.apply([])
    assert same(image(addons.pipe), image(setup.fresh))


def test_unknown_lora_is_refused_with_the_available_names(sd1: Setup) -> None:
    addons = sd1.addons()
    addons.apply([("alpha", 1.0)])
    with pytest.raises(InvalidRequestError) as caught:
        addons.apply([("beta", 1.0), ("nope", 1.0)])
    assert caught.value.field == "lora"
    assert str(caught.value) == (
        "lora: unknown LoRA 'nope'; available: alpha, alpha-peft, beta, unet-only"
    )
    assert addons.active == (("alpha", 1.0),)  # nothing changed, nothing loaded
    assert addons.loaded == ("alpha",)


def test_lora_of_another_family_is_refused_naming_both(
    sd1: Setup, sdxl: Setup, tmp_path: Path
) -> None:
    # An SDXL LoRA on SD 1.x: told by its metadata and keys (a second text encoder).
    on_sd1 = AddOns(sd1.pipeline(), "sd1", {"xl": sdxl.loras["alpha"]}, model="tiny")
    with pytest.raises(InvalidRequestError, match=r"'xl' is for SDXL models; model 'tiny' is SD 1"):
        on_sd1.apply([("xl", 1.0)])
    assert on_sd1.pipe.get_list_adapters() == {}  # refused before anything was loaded

    # An SD 1.x LoRA without metadata on SDXL: told by its cross-attention width.
    assert inspect_lora(sd1.loras["alpha-peft"]).family is None
    on_xl = AddOns(sdxl.pipeline(), "sdxl", {"sd": sd1.loras["alpha-peft"]}, model="tiny-xl")
    with pytest.raises(InvalidRequestError, match=r"'sd' does not fit model 'tiny-xl' \(SDXL\)"):
        on_xl.apply([("sd", 1.0)])

    # The config's family wins over detection.
    stated = LoraSpec("stated", sd1.loras["alpha"].source, family="sd2")
    on_sd1 = AddOns(sd1.pipeline(), "sd1", {"stated": stated}, model="tiny")
    with pytest.raises(InvalidRequestError, match=r"'stated' is for SD 2.x models; .* SD 1.x"):
        on_sd1.apply([("stated", 1.0)])


def test_lora_family_detection_from_real_widths_and_metadata(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    def lora(name: str, tensors: dict[str, torch.Tensor], **metadata: str) -> LoraSpec:
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path), metadata=metadata or None)
        return LoraSpec(name, str(path))

    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"
    peft_key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight"
    assert inspect_lora(lora("a", {key: torch.zeros(4, 768)})).family == "sd1"
    assert inspect_lora(lora("b", {key: torch.zeros(4, 1024)})).family == "sd2"
    assert inspect_lora(lora("c", {peft_key: torch.zeros(4, 2048)})).family == "sdxl"
    te2 = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"
    assert inspect_lora(lora("d", {te2: torch.zeros(4, 1280)})).family == "sdxl"
    v2 = lora("e", {key: torch.zeros(4, 32)}, ss_v2="True")
    assert inspect_lora(v2).family == "sd2"
    assert inspect_lora(lora("f", {key: torch.zeros(4, 32)})).family is None


def test_pickle_lora_is_refused_unless_allowed(sd1: Setup, tmp_path: Path) -> None:
    pickle = tmp_path / "alpha.pt"
    torch.save(tiny_lora_state_dict("sd1", seed=1), pickle)
    loras = {"pickled": LoraSpec("pickled", str(pickle))}
    refused = AddOns(sd1.pipeline(), "sd1", loras)
    with pytest.raises(UnsafeCheckpointError, match=r"LoRA 'pickled': alpha.pt is a pickle"):
        refused.apply([("pickled", 1.0)])
    assert refused.loaded == ()

    allowed = AddOns(sd1.pipeline(), "sd1", {**sd1.loras, **loras}, allow_pickle=True)
    allowed.apply([("pickled", 1.0)])
    from_pickle = image(allowed.pipe)
    allowed.apply([("alpha", 1.0)])
    assert np.abs(from_pickle - image(allowed.pipe)).max() < 1e-5


def test_missing_or_broken_lora_file_is_a_model_error(sd1: Setup, tmp_path: Path) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(Path(sd1.loras["alpha"].source).read_bytes()[:500])
    loras = {
        "gone": LoraSpec("gone", str(tmp_path / "gone.safetensors")),
        "broken": LoraSpec("broken", str(broken)),
    }
    addons = AddOns(sd1.pipeline(), "sd1", loras)
    with pytest.raises(CheckpointError, match=r"LoRA 'gone': .*gone.safetensors not found"):
        addons.apply([("gone", 1.0)])
    with pytest.raises(CheckpointError, match=r"LoRA 'broken': broken.safetensors is"):
        addons.apply([("broken", 1.0)])
    assert addons.loaded == ()


def test_not_a_lora_is_refused_and_leaves_nothing_behind(sd1: Setup, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "weird.safetensors"
    save_file({"something.weight": torch.zeros(3, 3)}, str(path))
    addons = AddOns(sd1.pipeline(), "sd1", {"weird": LoraSpec("weird", str(path)), **sd1.loras})
    with pytest.raises(CheckpointError, match=r"LoRA 'weird' could not be loaded"):
        addons.apply([("weird", 1.0)])
    assert addons.pipe.get_list_adapters() == {}
    addons.apply([("alpha", 1.0)])
    addons.apply([])
    assert same(image(addons.pipe), image(sd1.fresh))


def test_least_recently_used_loras_are_unloaded_beyond_the_cap(sd1: Setup) -> None:
    addons = sd1.addons(max_loaded=2)
    addons.apply([("alpha", 1.0)])
    alpha = image(addons.pipe)
    addons.apply([("beta", 1.0)])
    addons.apply([("unet-only", 1.0)])
    assert addons.loaded == ("beta", "unet-only")
    assert len(addons.pipe.get_list_adapters()["unet"]) == 2  # alpha's layers are gone
    addons.apply([("alpha", 1.0)])  # loaded again
    assert addons.loaded == ("unet-only", "alpha")
    assert same(image(addons.pipe), alpha)
    addons.apply([])
    assert same(image(addons.pipe), image(sd1.fresh))


def test_lora_hashes_are_a1111s_short_hashes(sd1: Setup, tmp_path: Path) -> None:
    addons = sd1.addons()
    text = addons.lora_hashes([("alpha", 1.0), ("beta", 0.5), ("alpha", 0.2)])
    assert re.fullmatch(r"alpha: [0-9a-f]{12}, beta: [0-9a-f]{12}", text)
    # A1111 ("AutoV3", what civitai looks LoRAs up by): SHA-256 of the data after the header.
    data = Path(sd1.loras["alpha"].source).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    assert text.startswith(f"alpha: {hashlib.sha256(data[8 + length :]).hexdigest()[:12]},")
    # Metadata is not part of it; the tensors are.
    same_tensors = save_tiny_lora(tmp_path / "copy.safetensors", "sd1", seed=1, format="kohya")
    assert lora_hash(same_tensors) == lora_hash(Path(sd1.loras["alpha"].source))
    assert lora_hash(Path(sd1.loras["beta"].source)) != lora_hash(same_tensors)
    assert addons.lora_hashes([]) == ""


# --- embeddings ----------------------------------------------------------------------------


def tokenizers(pipe: Any) -> list[Any]:
    return [t for t in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)) if t is not None]


def test_embeddings_load_once_as_tokens_and_change_the_image(setup: Setup) -> None:
    addons = setup.addons()
    assert addons.load_embeddings() == ("tinyemb", "otheremb")
    assert addons.embedding_errors == {}
    assert addons.load_embeddings() == ("tinyemb", "otheremb")  # a no-op the second time
    for tokenizer in tokenizers(addons.pipe):
        vocab = tokenizer.get_vocab()
        assert {"tinyemb", "tinyemb_1", "otheremb", "otheremb_1"} <= set(vocab)
        assert tokenizer.tokenize("a tinyemb photo")[1] == "tinyemb"

    # Prompts that do not name an embedding are untouched, byte for byte.
    assert same(image(addons.pipe), image(setup.fresh))
    # The embedding's vectors are what the token means: two embeddings, two images.
    one = image(addons.pipe, f"{PROMPT}, tinyemb")
    other = image(addons.pipe, f"{PROMPT}, otheremb")
    assert differ(one, other)
    assert differ(one, image(addons.pipe))


def test_prepare_prompt_spells_embeddings_as_loaded_so_all_vectors_are_used(sd1: Setup) -> None:
    addons = sd1.addons()
    addons.load_embeddings()
    assert addons.prepare_prompt("TinyEmb, a tinyemb-like TINYEMB x") == (
        "tinyemb, a tinyemb-like tinyemb x"
    )
    assert addons.prepare_prompt("mytinyemb tinyembs") == "mytinyemb tinyembs"
    # diffusers expands "tinyemb" into its two vectors only where spelled exactly as loaded.
    pipe = addons.pipe
    assert pipe.maybe_convert_prompt("tinyemb", pipe.tokenizer) == "tinyemb tinyemb_1"
    assert pipe.maybe_convert_prompt("TinyEmb", pipe.tokenizer) == "TinyEmb"
    right = image(pipe, addons.prepare_prompt(f"{PROMPT}, TinyEmb"))
    assert same(right, image(pipe, f"{PROMPT}, tinyemb"))


def test_embedding_of_another_family_is_not_loaded(sd1: Setup, sdxl: Setup) -> None:
    on_sd1 = AddOns(sd1.pipeline(), "sd1", embeddings={"xlemb": sdxl.embeddings["tinyemb"]})
    assert on_sd1.load_embeddings() == ()
    assert "is for SDXL" in on_sd1.embedding_errors["xlemb"]
    assert "xlemb" not in on_sd1.pipe.tokenizer.get_vocab()
    with pytest.raises(InvalidRequestError, match="is for SDXL"):
        AddOns(
            sd1.pipeline(), "sd1", embeddings={"xlemb": sdxl.embeddings["tinyemb"]}
        ).load_embeddings(strict=True)

    on_xl = AddOns(sdxl.pipeline(), "sdxl", embeddings={"sd": sd1.embeddings["tinyemb"]})
    assert on_xl.load_embeddings() == ()
    assert "is not for SDXL" in on_xl.embedding_errors["sd"]


def test_embedding_refusals(sd1: Setup, tmp_path: Path) -> None:
    pickle = tmp_path / "old.pt"
    torch.save({"string_to_param": {"*": torch.randn(2, 32)}, "name": "oldemb"}, pickle)
    specs = {
        "oldemb": EmbeddingSpec("oldemb", str(pickle)),
        "photo": EmbeddingSpec("photo", sd1.embeddings["tinyemb"].source),  # a vocabulary word
    }
    addons = AddOns(sd1.pipeline(), "sd1", embeddings=specs)
    assert addons.load_embeddings() == ()
    assert "pickle" in addons.embedding_errors["oldemb"]
    assert "already a token" in addons.embedding_errors["photo"]

    allowed = AddOns(
        sd1.pipeline(), "sd1", embeddings={"oldemb": specs["oldemb"]}, allow_pickle=True
    )
    assert allowed.load_embeddings() == ("oldemb",)
    assert "oldemb_1" in allowed.pipe.tokenizer.get_vocab()


def test_loras_and_embeddings_together(sdxl: Setup) -> None:
    addons = sdxl.addons()
    addons.load_embeddings()
    addons.apply([("alpha", 0.7)])
    both = image(addons.pipe, f"{PROMPT}, tinyemb")
    addons.apply([])
    assert differ(both, image(addons.pipe, f"{PROMPT}, tinyemb"))
    assert same(image(addons.pipe), image(sdxl.fresh))


def test_a_random_lora_made_from_a_loaded_pipeline_loads_and_changes_the_image(
    setup: Setup, tmp_path: Path
) -> None:
    pipe = setup.pipeline()
    path = save_random_lora(pipe, tmp_path / "random.safetensors", rank=4, seed=3)
    keys = random_lora_state_dict(pipe, rank=4, seed=3)
    components = {key.split(".", 1)[0] for key in keys}
    expected = {"unet", "text_encoder"} | ({"text_encoder_2"} if setup.family == "sdxl" else set())
    assert components == expected
    addons = AddOns(pipe, setup.family, {"random": LoraSpec("random", str(path))}, model="tiny")
    addons.apply([("random", 1.0)])
    # Every adapted projection became a LoRA layer: nothing in the file was ignored.
    adapted = sum(
        1
        for component in expected
        for module in getattr(pipe, component).modules()
        if isinstance(getattr(module, "lora_A", None), torch.nn.ModuleDict) and module.lora_A
    )
    assert adapted == len(keys) // 2
    assert differ(image(pipe), image(setup.fresh))
    addons.apply([])
    assert same(image(pipe), image(setup.fresh))
