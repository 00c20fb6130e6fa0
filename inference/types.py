"""The values that cross the boundary between the bot and the inference engine."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

ModelFamily = Literal["sd1", "sd2", "sdxl"]
ModelVariant = Literal["base", "turbo", "lcm"]
PredictionType = Literal["epsilon", "v_prediction"]
SourceKind = Literal["folder", "single_file", "hub"]
ImageOperation = Literal["img2img", "upscale", "zoom_out"]


@dataclass(frozen=True)
class ModelSpec:
    """A model as the operator names it in the config.

    `source` is a diffusers folder, a single-file checkpoint or a hub id. `config` points at a
    diffusers-layout folder holding the architecture configs for a single file whose
    architecture is not one of the shipped ones (the tiny test model, a custom fine-tune).
    The other fields override what is detected from the checkpoint.
    """

    name: str
    source: str
    config: Path | None = None
    family: ModelFamily | None = None
    variant: ModelVariant | None = None
    prediction_type: PredictionType | None = None
    # The name of another [[models]] entry, an inpainting checkpoint (9-channel UNet) of the
    # same family, used for "zoom out" of this model's images; None: inpaint with this model.
    inpainting: str | None = None
    # A1111's "Clip skip": 1 reads the text encoder's last layer, 2 the one before (anime
    # fine-tunes want 2). None: 1.
    clip_skip: int | None = None


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA as the operator names it ([[loras]]): Kohya/A1111 or diffusers format
    `.safetensors`. `family` (sd1, sd2, sdxl) is checked against the model's; `triggers` are
    words that wake it, shown in autocomplete."""

    name: str
    source: str
    family: ModelFamily | None = None
    triggers: tuple[str, ...] = ()


@dataclass(frozen=True)
class StyleSpec:
    """A named style ([[styles]]): `prompt` is a template where `{prompt}` stands for what the
    user typed (without it, the template is appended, as A1111 does); `negative_prompt` is
    added to the user's negative prompt."""

    name: str
    prompt: str = "{prompt}"
    negative_prompt: str = ""

    def apply(self, prompt: str, negative: str) -> tuple[str, str]:
        if "{prompt}" in self.prompt:
            styled = self.prompt.replace("{prompt}", prompt)
        else:
            styled = ", ".join(part for part in (prompt, self.prompt) if part)
        negatives = ", ".join(part for part in (negative, self.negative_prompt) if part)
        return styled, negatives


@dataclass(frozen=True)
class EmbeddingSpec:
    """A textual-inversion embedding ([[embeddings]]) used by its name in prompts."""

    name: str
    source: str


@dataclass(frozen=True)
class UpscalerSpec:
    """An upscaler model ([[upscalers]]): an ESRGAN-family `.safetensors` file that spandrel
    loads. Its own scale (×2, ×4) is read from the file; the result is resized to the asked
    size with Lanczos."""

    name: str
    source: str


@dataclass(frozen=True)
class ModelInfo:
    """What is known about a model without loading its weights."""

    name: str
    family: ModelFamily
    variant: ModelVariant
    source_kind: SourceKind
    native_size: int  # the side in pixels the model was trained at (512, 768, 1024; 64 tiny)
    default_steps: int
    default_guidance: float
    default_sampler: str
    # A 9-channel (inpainting) UNet: it fills a masked picture (zoom out) and nothing else.
    inpainting: bool = False


@dataclass(frozen=True)
class ImageSource:
    """The picture an image-based request starts from, and what to do with it.

    - "img2img": denoise the picture at `strength` (variations, remix, image prompts);
    - "upscale": resize it `scale` times (Lanczos, or the configured `upscaler` model), then
      an img2img pass at `strength` (A1111's hires fix);
    - "zoom_out": pad the canvas `scale` times and inpaint the border (strength 1).

    `path` is a PNG on disk the worker reads when the job runs (a parent job's image, or a
    user's attachment saved by the bot), so a queued job survives a restart like any other.
    `width` and `height` are the picture's own size.
    """

    path: str
    width: int
    height: int
    operation: ImageOperation = "img2img"
    strength: float = 0.6
    scale: float = 1.0
    upscaler: str | None = None  # None: Lanczos


@dataclass(frozen=True)
class GenerationRequest:
    """A complete, validated request: every option resolved to a value.

    With a `source`, the request works from a picture; width and height are then the size of
    the result (the upscaled or zoomed-out canvas)."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    sampler: str
    count: int
    model: str
    source: ImageSource | None = None

    @property
    def operation(self) -> str:
        return "txt2img" if self.source is None else self.source.operation

    @property
    def loras(self) -> tuple[tuple[str, float], ...]:
        """The `<lora:name:weight>` tags of both prompts, in order (the prompts keep them, as
        typed, so the PNG's parameters show them as A1111 does)."""
        from inference.prompt_syntax import extract_loras

        return extract_loras(self.prompt) + extract_loras(self.negative_prompt)

    def seeds(self) -> tuple[int, ...]:
        """Image i uses seed + i, so any image of a grid can be reproduced alone."""
        return tuple(self.seed + i for i in range(self.count))

    def batch_key(self) -> tuple[object, ...]:
        """Requests with equal keys can share one batched pipeline call."""
        return (
            self.model,
            self.width,
            self.height,
            self.steps,
            self.sampler,
            self.guidance,
            self.source,  # one picture and operation per pipeline call
            self.loras,  # one set of LoRA weights per pipeline call
        )


@dataclass(frozen=True)
class Progress:
    """One denoising step done. `preview` is a small JPEG of the current latents, if asked."""

    step: int
    total: int
    preview: bytes | None = None

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 1.0


@dataclass(frozen=True)
class GeneratedImage:
    png: bytes  # carries the A1111-style "parameters" text chunk
    seed: int
    width: int
    height: int


@dataclass(frozen=True)
class GenerationResult:
    request: GenerationRequest
    images: tuple[GeneratedImage, ...]
    grid_png: bytes | None  # only when count > 1
    elapsed_s: float
    notes: tuple[str, ...] = field(default=())  # e.g. "retried with VAE tiling after OOM"


ProgressCallback = Callable[[int, Progress], None]
"""Called from the worker thread as (index of the request in the batch, progress)."""

CancelCheck = Callable[[int], bool]
"""Asked from the worker thread between steps: is request i of the batch cancelled?"""


class ImageGenerator(Protocol):
    """Runs one batched pipeline call. Blocking: call it from the worker thread only."""

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        on_progress: ProgressCallback | None = None,
        is_cancelled: CancelCheck | None = None,
        want_previews: bool = False,
    ) -> list[GenerationResult | None]:
        """One result per request; None for a request cancelled mid-batch.

        Raises GenerationCancelled when every request of the batch is cancelled.
        """
        ...

    def model_info(self, name: str) -> ModelInfo: ...

    def warm_up(self, model: str) -> None:
        """Do the slow first-use work (imports, loading `model`) now, not on a first job."""
        ...
