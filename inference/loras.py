"""LoRAs and textual-inversion embeddings on a loaded pipeline, through diffusers' own API.

One `AddOns` belongs to one loaded pipeline. `apply` makes exactly the asked set of LoRAs
active with the asked weights: each LoRA is loaded (`load_lora_weights`, which reads Kohya /
A1111 and diffusers files alike) the first time a request uses it, kept loaded under its
name, and switched on or off with `set_adapters` / `disable_lora`, so switching sets costs
milliseconds, not a reload. An empty set disables every LoRA layer: the pipeline then computes
exactly what it computed before any LoRA was loaded (tested byte for byte).

`load_embeddings` loads the configured textual-inversion embeddings once, each under its name
as a token, so prompts name them as in A1111 ("…, easynegative").

Files are read only as safetensors unless pickles are explicitly allowed (as for checkpoints:
unpickling can run arbitrary code). Before a LoRA is loaded its family (from the config, the
file's metadata or its keys) and its cross-attention width are checked against the model's.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import struct
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from inference.checkpoints import (
    FAMILY_NAMES,
    PICKLE_SUFFIXES,
    CheckpointHeader,
    load_pickle_state_dict,
    read_checkpoint_header,
)
from inference.errors import (
    CheckpointError,
    InferenceError,
    InvalidRequestError,
    UnsafeCheckpointError,
)
from inference.types import EmbeddingSpec, LoraSpec, ModelFamily

logger = logging.getLogger(__name__)

_PICKLE_HINT = (
    "loading it can run arbitrary code, so it is refused. Use a .safetensors version (most "
    "sites offer one), or set allow_pickle only if you trust the file"
)

# Cross-attention width (the text conditioning a UNet attends to) of each family's real models.
_CROSS_WIDTHS: Mapping[int, ModelFamily] = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
# The down-projection of cross-attention's key in every LoRA layout diffusers reads: Kohya
# (`attn2_to_k.lora_down.weight`), PEFT (`attn2.to_k.lora_A.weight`) and the older diffusers
# ones (`attn2.processor.to_k_lora.down.weight`, `attn2.to_k.lora.down.weight`).
_CROSS_KEY = re.compile(
    r"attn2[._](?:processor[._])?to_k(?:_lora)?[._](?:lora_down|lora_A|lora[._]down|down)\.weight$"
)
_SDXL_KEY_PREFIXES = ("lora_te1_", "lora_te2_", "text_encoder_2.", "te2.")


@dataclass(frozen=True)
class LoraFile:
    """What a LoRA file is, read from its header only."""

    name: str
    path: Path
    family: ModelFamily | None  # from the config, the metadata or the keys; None: unknown
    cross_attention_width: int | None  # None: the file adapts no cross-attention key


def lora_path(spec: LoraSpec | EmbeddingSpec, *, allow_pickle: bool = False) -> Path:
    """The file of a LoRA or embedding, checked to exist and not to be a refused pickle."""
    kind = "LoRA" if isinstance(spec, LoraSpec) else "embedding"
    path = Path(spec.source).expanduser()
    if not path.is_file():
        where = "is a folder; name the .safetensors file in it" if path.is_dir() else "not found"
        raise CheckpointError(f"{kind} {spec.name!r}: {path} {where}.")
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise UnsafeCheckpointError(
            f"{kind} {spec.name!r}: {path.name} is a pickle file ({path.suffix}): {_PICKLE_HINT}."
        )
    return path


def inspect_lora(spec: LoraSpec, *, allow_pickle: bool = False) -> LoraFile:
    """A LoRA's family and cross-attention width from its header, without loading it."""
    path = lora_path(spec, allow_pickle=allow_pickle)
    try:
        header = read_checkpoint_header(path, allow_pickle=allow_pickle)
    except CheckpointError as error:
        raise type(error)(f"LoRA {spec.name!r}: {error}") from error
    width = next(
        (
            entry.shape[-1]
            for key, entry in header.tensors.items()
            if _CROSS_KEY.search(key) and len(entry.shape) >= 2
        ),
        None,
    )
    family = spec.family or _family_from_metadata(header) or _family_from_keys(header, width)
    return LoraFile(spec.name, path, family, width)


def _family_from_metadata(header: CheckpointHeader) -> ModelFamily | None:
    """The family sd-scripts (`ss_base_model_version`, `ss_v2`) or a modelspec header names."""
    meta = header.metadata
    base = meta.get("ss_base_model_version", "").lower()
    architecture = meta.get("modelspec.architecture", "").lower()
    if base.startswith("sdxl") or architecture.startswith("stable-diffusion-xl"):
        return "sdxl"
    if base.startswith("sd_v2") or meta.get("ss_v2") == "True":
        return "sd2"
    if architecture.startswith("stable-diffusion-v2"):
        return "sd2"
    if base.startswith("sd_v1") or architecture.startswith("stable-diffusion-v1"):
        return "sd1"
    return None


def _family_from_keys(header: CheckpointHeader, width: int | None) -> ModelFamily | None:
    if any(key.startswith(_SDXL_KEY_PREFIXES) for key in header.tensors):
        return "sdxl"  # a second text encoder
    return _CROSS_WIDTHS.get(width) if width is not None else None


# --- hashes --------------------------------------------------------------------------------

_hashes: dict[tuple[Path, int, int], str] = {}


def lora_hash(path: Path) -> str:
    """The short hash A1111 writes in "Lora hashes" and civitai looks LoRAs up by ("AutoV3"):
    the first 12 hex digits of the SHA-256 of a safetensors file's tensor data (the bytes
    after its header, so editing the metadata keeps the hash), or of a whole pickle file.
    Cached per file (path, size and modification time)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        digest = hashlib.sha256()
        with path.open("rb") as file:
            if path.suffix.lower() not in PICKLE_SUFFIXES:
                (length,) = struct.unpack("<Q", file.read(8))
                file.seek(8 + length)
            while chunk := file.read(1 << 20):
                digest.update(chunk)
        _hashes[key] = digest.hexdigest()[:12]
    return _hashes[key]


def _infotext_name(name: str) -> str:
    # As A1111: the list is "name: hash, name: hash", so names lose their colons and commas.
    return name.replace(":", "_").replace(",", "_")


# --- the add-ons of one pipeline -----------------------------------------------------------


class AddOns:
    """The LoRAs and embeddings of one loaded pipeline. Not thread-safe: use it from the thread
    that runs the pipeline, between calls.

    `max_loaded` caps how many LoRAs stay loaded (each costs its file size in memory); beyond
    it the least recently used ones not in the current set are deleted. None: no cap.
    """

    def __init__(
        self,
        pipe: Any,
        family: ModelFamily,
        loras: Mapping[str, LoraSpec] | None = None,
        embeddings: Mapping[str, EmbeddingSpec] | None = None,
        *,
        model: str = "this model",
        allow_pickle: bool = False,
        max_loaded: int | None = None,
    ) -> None:
        self.pipe = pipe
        self.family = family
        self.model = model
        self.loras = dict(loras or {})
        self.embeddings = dict(embeddings or {})
        self.allow_pickle = allow_pickle
        self.max_loaded = max_loaded
        # LoRA name -> its adapter name in the pipeline, least recently used first. Adapter
        # names are our own: peft keeps adapters in ModuleDicts, where a name such as "half"
        # or "to" (an nn.Module attribute) or one with a dot cannot be a key, and diffusers
        # tells adapters apart by substring (an adapter "d" is found in every "down_blocks" key).
        self._loaded: OrderedDict[str, str] = OrderedDict()
        self._adapters_made = 0
        self._active: tuple[tuple[str, float], ...] = ()
        self._tokens: dict[str, str] = {}  # embedding name -> its token (loaded ones)
        self.embedding_errors: dict[str, str] = {}  # embedding name -> why it did not load

    @property
    def loaded(self) -> tuple[str, ...]:
        """The LoRAs loaded into the pipeline (active or not), least recently used first."""
        return tuple(self._loaded)

    @property
    def active(self) -> tuple[tuple[str, float], ...]:
        """The LoRAs and weights the pipeline computes with now (sorted by name)."""
        return self._active

    # --- LoRAs ---

    def resolve(self, loras: Sequence[tuple[str, float]]) -> tuple[tuple[str, float], ...]:
        """The set `apply` would make active: known names only (else InvalidRequestError),
        repeated names' weights summed, zero weights dropped, sorted by name."""
        weights: dict[str, float] = {}
        for name, weight in loras:
            if name not in self.loras:
                available = ", ".join(sorted(self.loras)) or "none configured"
                raise InvalidRequestError("lora", f"unknown LoRA {name!r}; available: {available}")
            if not math.isfinite(weight):
                raise InvalidRequestError("lora", f"LoRA {name!r} has weight {weight}")
            weights[name] = weights.get(name, 0.0) + float(weight)
        # A zero weight is no LoRA: leaving it out keeps the result byte-identical to none.
        return tuple(sorted((n, w) for n, w in weights.items() if w != 0.0))

    def apply(self, loras: Sequence[tuple[str, float]]) -> None:
        """Make exactly these LoRAs active with these weights (an empty set: none).

        Raises InvalidRequestError for an unknown LoRA or one made for another model family,
        ModelError subclasses for a missing, refused (pickle) or unreadable file. On error the
        pipeline keeps its previous set.
        """
        wanted = self.resolve(loras)
        if wanted == self._active:
            return
        for name, _ in wanted:
            self._ensure_loaded(name)
        for name, _ in wanted:
            self._loaded.move_to_end(name)
        self._evict(keep={name for name, _ in wanted})
        if not wanted:
            self.pipe.disable_lora()
        else:
            self.pipe.enable_lora()
            adapters = [self._loaded[name] for name, _ in wanted]
            self.pipe.set_adapters(adapters, adapter_weights=[w for _, w in wanted])
        self._active = wanted

    def lora_hashes(self, loras: Sequence[tuple[str, float]]) -> str:
        """A1111's "Lora hashes" value for these LoRAs: "name: 1a2b3c4d5e6f, …" (each named
        once, in order of first mention; unquoted: the infotext writer quotes it)."""
        names = list(dict.fromkeys(name for name, _ in loras))
        return ", ".join(
            f"{_infotext_name(name)}: {lora_hash(lora_path(self.loras[name], allow_pickle=True))}"
            for name in names
            if name in self.loras
        )

    def _ensure_loaded(self, name: str) -> None:
        if name in self._loaded:
            return
        spec = self.loras[name]
        if spec.name != name:  # messages use the name requests use
            spec = replace(spec, name=name)
        info = inspect_lora(spec, allow_pickle=self.allow_pickle)
        self._check_fits(info)
        source: str | dict[str, Any] = str(info.path)
        if info.path.suffix.lower() in PICKLE_SUFFIXES:  # allowed: tensors only, no code
            source = load_pickle_state_dict(info.path)
        self._adapters_made += 1
        adapter = f"addon_{self._adapters_made}_"  # never a substring of another one
        try:
            with _quiet_lora_loading():
                self.pipe.load_lora_weights(source, adapter_name=adapter, use_safetensors=True)
        except InferenceError:
            raise
        except Exception as error:  # diffusers and peft raise many types
            self._forget_partial(adapter)
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            logger.exception("loading LoRA %r from %s failed", name, info.path)
            raise CheckpointError(
                f"LoRA {name!r} could not be loaded from {info.path.name}: {reason}"
            ) from error
        self._loaded[name] = adapter
        logger.info("loaded LoRA %r into model %s as %s", name, self.model, adapter)

    def _check_fits(self, info: LoraFile) -> None:
        model_name = FAMILY_NAMES[self.family]
        if info.family is not None and info.family != self.family:
            raise InvalidRequestError(
                "lora",
                f"LoRA {info.name!r} is for {FAMILY_NAMES[info.family]} models; model "
                f"{self.model!r} is {model_name}",
            )
        model_width = self.pipe.unet.config.cross_attention_dim
        if info.cross_attention_width is not None and info.cross_attention_width != model_width:
            made_for = _CROSS_WIDTHS.get(info.cross_attention_width)
            was = f"a {FAMILY_NAMES[made_for]} model" if made_for else "another model family"
            raise InvalidRequestError(
                "lora",
                f"LoRA {info.name!r} does not fit model {self.model!r} ({model_name}): it was "
                f"made for {was} (cross-attention {info.cross_attention_width} wide, the "
                f"model's {model_width})",
            )

    def _forget_partial(self, adapter: str) -> None:
        """Remove what a failed load left behind (its layers in some components)."""
        try:
            present = self.pipe.get_list_adapters()
            if any(adapter in names for names in present.values()):
                self.pipe.delete_adapters(adapter)
        except Exception:  # already failing: keep the first error
            logger.exception("could not remove the partly loaded adapter %s", adapter)

    def _evict(self, keep: set[str]) -> None:
        if self.max_loaded is None:
            return
        for name in list(self._loaded):
            if len(self._loaded) <= self.max_loaded:
                break
            if name not in keep:
                self.pipe.delete_adapters(self._loaded[name])
                del self._loaded[name]
                logger.info("unloaded LoRA %r from model %s", name, self.model)

    # --- embeddings ---

    @property
    def embedding_tokens(self) -> dict[str, str]:
        """Loaded embeddings: name -> the token prompts use (the name itself)."""
        return dict(self._tokens)

    def load_embeddings(self, *, strict: bool = False) -> tuple[str, ...]:
        """Load every configured embedding not loaded yet, each under its name as a token;
        returns the names loaded in all. One that cannot load (missing, pickle, made for
        another family, a name the tokenizer already has) is logged and recorded in
        `embedding_errors`, or with `strict` raised."""
        for name, spec in self.embeddings.items():
            if name in self._tokens or name in self.embedding_errors:
                continue
            try:
                self._load_embedding(spec)
            except InferenceError as error:
                if strict:
                    raise
                self.embedding_errors[name] = str(error)
                logger.warning("embedding %r not loaded: %s", name, error)
        return tuple(self._tokens)

    def prepare_prompt(self, prompt: str) -> str:
        """The prompt with each whole-word mention of an embedding in the token's own case.

        diffusers finds an embedding token case-insensitively (CLIP lower-cases text) but
        expands a multi-vector one into all its tokens only where the prompt spells it
        exactly as loaded; elsewhere it silently uses the first vector only."""
        for name, token in self._tokens.items():
            pattern = rf"(?<![\w-]){re.escape(name)}(?![\w-])"
            prompt = re.sub(pattern, token.replace("\\", "\\\\"), prompt, flags=re.IGNORECASE)
        return prompt

    def _load_embedding(self, spec: EmbeddingSpec) -> None:
        import torch

        path = lora_path(spec, allow_pickle=self.allow_pickle)
        tensors = _read_embedding(spec.name, path)
        encoders = [(self.pipe.text_encoder, self.pipe.tokenizer, "clip_l")]
        if self.family == "sdxl":
            encoders.append((self.pipe.text_encoder_2, self.pipe.tokenizer_2, "clip_g"))
        pairs: list[tuple[Any, Any, torch.Tensor]] = []
        for text_encoder, tokenizer, key in encoders:
            vectors = _embedding_for(spec.name, tensors, key, self.family)
            width = text_encoder.get_input_embeddings().weight.shape[-1]
            if vectors.shape[-1] != width:
                made_for = {768: "SD 1.x", 1024: "SD 2.x"}.get(vectors.shape[-1])
                was = f" (it was made for {made_for})" if made_for and self.family != "sdxl" else ""
                raise InvalidRequestError(
                    "embedding",
                    f"embedding {spec.name!r} has {vectors.shape[-1]}-wide vectors but model "
                    f"{self.model!r} ({FAMILY_NAMES[self.family]}) needs {width}{was}",
                )
            if spec.name in tokenizer.get_vocab() or f"{spec.name}_1" in tokenizer.get_vocab():
                raise InvalidRequestError(
                    "embedding",
                    f"embedding name {spec.name!r} is already a token of the model's "
                    "vocabulary; give it another name in the config",
                )
            pairs.append((text_encoder, tokenizer, vectors))
        with _quiet_lora_loading():
            for text_encoder, tokenizer, vectors in pairs:
                # Room for the new tokens first, without transformers' "mean resizing" (a
                # covariance of the whole vocabulary, and draws from the global RNG): diffusers
                # then finds the matrix large enough and only writes the vectors in.
                count = vectors.reshape(-1, vectors.shape[-1]).shape[0]
                text_encoder.resize_token_embeddings(len(tokenizer) + count, mean_resizing=False)
                self.pipe.load_textual_inversion(
                    vectors.reshape(-1, vectors.shape[-1]),
                    token=spec.name,
                    text_encoder=text_encoder,
                    tokenizer=tokenizer,
                )
        self._tokens[spec.name] = spec.name
        logger.info("loaded embedding %r into model %s", spec.name, self.model)


def _read_embedding(name: str, path: Path) -> dict[str, Any]:
    """An embedding file's tensors: safetensors, or an allowed (weights-only) pickle in
    A1111's layout (`string_to_param: {"*": vectors}`)."""
    import torch

    try:
        if path.suffix.lower() in PICKLE_SUFFIXES:
            data = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(data, dict) and isinstance(data.get("string_to_param"), dict):
                data = {"emb_params": data["string_to_param"].get("*")}
        else:
            from safetensors.torch import load_file

            data = load_file(str(path), device="cpu")
    except Exception as error:
        raise CheckpointError(
            f"embedding {name!r}: {path.name} cannot be read ({type(error).__name__}: "
            f"{str(error)[:200]})"
        ) from error
    if isinstance(data, torch.Tensor):
        data = {"emb_params": data}
    if not isinstance(data, dict) or not data:
        raise CheckpointError(f"embedding {name!r}: {path.name} holds no embedding vectors")
    return {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}


def _embedding_for(name: str, tensors: dict[str, Any], key: str, family: ModelFamily) -> Any:
    """The vectors for one text encoder: `clip_l`/`clip_g` (SDXL), else the single tensor."""
    if family == "sdxl":
        if key not in tensors:
            raise InvalidRequestError(
                "embedding",
                f"embedding {name!r} is not for SDXL (it lacks {key}, one set of vectors per "
                "text encoder); SDXL embeddings hold clip_l and clip_g",
            )
        return tensors[key]
    if "clip_l" in tensors and "clip_g" in tensors:
        raise InvalidRequestError(
            "embedding",
            f"embedding {name!r} is for SDXL (clip_l and clip_g); the model is "
            f"{FAMILY_NAMES[family]}",
        )
    if len(tensors) != 1:
        raise CheckpointError(
            f"embedding {name!r} holds {len(tensors)} tensors ({', '.join(sorted(tensors))}); "
            "expected one (emb_params)"
        )
    return next(iter(tensors.values()))


@contextmanager
def _quiet_lora_loading() -> Iterator[None]:
    """No progress bars and no peft "multiple adapters" warning (several are the point)."""
    from inference.models import _quiet_loading

    with _quiet_loading(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        yield
