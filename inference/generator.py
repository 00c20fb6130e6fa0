"""DiffusersGenerator: runs batched pipeline calls with seeds, progress, previews and cancel.

Blocking and not thread-safe (a pipeline's scheduler holds state): exactly one thread, the
queue's worker thread, calls `generate`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from inference.device import (
    Placement,
    RuntimeOptions,
    choose_placement,
    free_accelerator_memory,
    is_out_of_memory,
    prepare_pipeline,
)
from inference.errors import (
    GenerationCancelled,
    GenerationFailedError,
    ModelError,
    UnknownModelError,
)
from inference.images import encode_png, make_grid, parameters_text
from inference.loras import AddOns
from inference.operations import (
    TILING_PIXELS,
    PreparedSource,
    overlay_kept,
    prepare_source,
    vae_tiling,
)
from inference.preview import encode_preview, latents_to_rgb
from inference.prompt_encoding import encode_prompts
from inference.samplers import make_scheduler
from inference.types import (
    CancelCheck,
    EmbeddingSpec,
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    LoraSpec,
    ModelInfo,
    ModelSpec,
    Progress,
    ProgressCallback,
    UpscalerSpec,
)

logger = logging.getLogger(__name__)


@dataclass
class _Loaded:
    pipe: Any
    info: ModelInfo
    scheduler_config: Any  # the model's own, kept because samplers replace pipe.scheduler
    addons: AddOns  # the LoRAs and embeddings on `pipe` (and so on its derived pipelines)
    # Image-to-image and inpainting pipelines made from `pipe` with from_pipe: the same
    # weights, no copy. Held only here, so evicting the model drops them too.
    derived: dict[str, Any] = field(default_factory=dict)


class _StepWatcher:
    """The pipeline's callback_on_step_end: progress, throttled previews, cancellation."""

    def __init__(
        self,
        owners: list[int],
        family: str,
        on_progress: ProgressCallback | None,
        is_cancelled: CancelCheck | None,
        preview_interval_s: float | None,
    ) -> None:
        self.owners = owners  # request index of each image in the whole batch
        self.requests = sorted(set(owners))
        self.first_image: dict[int, int] = {}  # request -> its first image in the current call
        self.begin_call(owners)
        self.family = family
        self.on_progress = on_progress
        self.is_cancelled = is_cancelled
        self.preview_interval_s = preview_interval_s
        self.last_preview = time.monotonic()
        self.cancelled: set[int] = set()
        self.preview_seconds = 0.0

    def begin_call(self, owners_in_call: list[int]) -> None:
        """A pipeline call starts over these images (all of them, or one in an OOM retry)."""
        self.first_image = {}
        for position, request in enumerate(owners_in_call):
            self.first_image.setdefault(request, position)

    def __call__(self, pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict:
        if self.is_cancelled is not None:
            self.cancelled.update(i for i in self.requests if self.is_cancelled(i))
            if len(self.cancelled) == len(self.requests):
                raise GenerationCancelled()  # diffusers has no cancel API: raising from
                # callback_on_step_end is what stops the call
        # img2img runs only the last steps × strength of the schedule: the pipeline's own count.
        total = getattr(pipe, "num_timesteps", None) or len(pipe.scheduler.timesteps)
        previews = self._previews(kwargs.get("latents"), step + 1, total)
        if self.on_progress is not None:
            for i in self.first_image:
                if i not in self.cancelled:
                    self.on_progress(i, Progress(step + 1, total, previews.get(i)))
        return kwargs

    def _previews(self, latents: Any, step: int, total: int) -> dict[int, bytes]:
        if self.preview_interval_s is None or latents is None or step >= total:
            return {}
        now = time.monotonic()
        if now - self.last_preview < self.preview_interval_s:
            return {}
        self.last_preview = now
        previews = {}
        for i, first in self.first_image.items():
            if i not in self.cancelled:
                previews[i] = encode_preview(latents_to_rgb(latents[first], self.family))
        self.preview_seconds += time.monotonic() - now
        return previews


def _release_frames(error: BaseException, *, stop_at: BaseException | None) -> None:
    """Clear the locals of the finished frames in `error`'s tracebacks (and those of its
    causes and contexts, down to `stop_at`), keeping file and line numbers for logging."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or current is stop_at or id(current) in seen:
            continue
        seen.add(id(current))
        tb = current.__traceback__
        while tb is not None:
            try:
                tb.tb_frame.clear()
            except RuntimeError:
                pass  # still running: this call's own frame and its callers'
            else:
                if sys.version_info < (3, 13):
                    # Before PEP 667 a frame caches a locals() snapshot (diffusers calls
                    # locals() every step) that frame.clear() leaves behind.
                    tb.tb_frame.f_locals.clear()
            tb = tb.tb_next
        pending += [current.__cause__, current.__context__]


class DiffusersGenerator:
    """The ImageGenerator that runs real diffusers pipelines."""

    def __init__(
        self,
        models: Mapping[str, ModelSpec],
        options: RuntimeOptions,
        upscalers: Mapping[str, UpscalerSpec] | None = None,
        *,
        loras: Mapping[str, LoraSpec] | None = None,
        embeddings: Mapping[str, EmbeddingSpec] | None = None,
    ) -> None:
        if not models:
            raise ValueError("at least one model must be configured")
        self.models = dict(models)
        self.options = options
        self.upscalers = dict(upscalers or {})
        self.loras = dict(loras or {})
        self.embeddings = dict(embeddings or {})
        self._upscaler: Any = None  # the last used upscaler model (LoadedUpscaler), kept
        self.tiling_pixels = TILING_PIXELS  # results larger than this decode with VAE tiling
        self._infos: dict[str, ModelInfo] = {}
        self._loaded: OrderedDict[str, _Loaded] = OrderedDict()  # least recently used first
        self._placement: Placement | None = None
        self.last_preview_seconds = 0.0  # measured cost of previews in the last call

    @property
    def placement(self) -> Placement:
        if self._placement is None:
            self._placement = choose_placement(self.options)
        return self._placement

    def model_info(self, name: str) -> ModelInfo:
        from inference.models import inspect_model

        if name not in self.models:
            known = ", ".join(sorted(self.models))
            raise UnknownModelError(f"model: unknown model {name!r}; available: {known}")
        if name not in self._infos:
            self._infos[name] = inspect_model(
                self.models[name], allow_pickle=self.options.allow_pickle
            )
        return self._infos[name]

    def warm_up(self, model: str) -> None:
        """Import diffusers and transformers, build the tokenizers, load `model`: everything
        that would otherwise make the first job (and, through the GIL, the event loop) slow.

        Checks the configured device first: a device this machine lacks raises ModelError here,
        before the bot connects, not in every job.
        """
        from inference.tokens import count_prompt_tokens

        logger.info("generating on %s", self.placement.describe())
        count_prompt_tokens("warm up")
        self.load(model)

    def load(self, name: str) -> _Loaded:
        """Load (or reuse) a pipeline, evicting the least recently used beyond the cap."""
        from inference.models import load_pipeline

        if name in self._loaded:
            self._loaded.move_to_end(name)
            return self._loaded[name]
        info = self.model_info(name)
        while len(self._loaded) >= max(1, self.options.max_resident_models):
            self._unload_oldest(name)
        started = time.monotonic()
        pipe = load_pipeline(
            self.models[name],
            torch_dtype=self.placement.dtype,
            allow_pickle=self.options.allow_pickle,
        )
        pipe = prepare_pipeline(pipe, self.placement, self.options)
        addons = AddOns(
            pipe,
            info.family,
            self.loras,
            self.embeddings,
            model=name,
            allow_pickle=self.options.allow_pickle,
        )
        addons.load_embeddings()  # a bad one is logged and left out, not fatal
        loaded = _Loaded(pipe, info, pipe.scheduler.config, addons)
        self._loaded[name] = loaded
        logger.info(
            "loaded model %s (%s) on %s in %.1f s",
            name,
            info.family,
            self.placement.describe(),
            time.monotonic() - started,
        )
        return loaded

    def _unload_oldest(self, reason: str) -> None:
        """Drop the least recently used pipeline and return its memory before `reason` loads.

        Deleted by key, never popped into a local: a name bound to the record (even `_`)
        would keep the whole model, and on CUDA its VRAM, alive through the next load.
        """
        evicted = next(iter(self._loaded))
        del self._loaded[evicted]
        logger.info("unloading model %s to make room for %s", evicted, reason)
        free_accelerator_memory()  # gc.collect(): pipelines hold reference cycles

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        on_progress: ProgressCallback | None = None,
        is_cancelled: CancelCheck | None = None,
        want_previews: bool = False,
    ) -> list[GenerationResult | None]:
        handled_by_caller = sys.exception()
        try:
            return self._generate(requests, on_progress, is_cancelled, want_previews)
        except BaseException as error:
            # The queue keeps a failed job's error; its traceback's frames hold the pipeline
            # (`loaded`, `pipe`, the pipeline's own `self`) and would pin an evicted model.
            _release_frames(error, stop_at=handled_by_caller)
            raise

    def _generate(
        self,
        requests: Sequence[GenerationRequest],
        on_progress: ProgressCallback | None,
        is_cancelled: CancelCheck | None,
        want_previews: bool,
    ) -> list[GenerationResult | None]:
        if not requests:
            return []
        first = requests[0]
        if any(r.batch_key() != first.batch_key() for r in requests):
            raise ValueError(
                "a batch must share model, size, steps, sampler, guidance and source picture"
            )
        loaded = self.load(self._pipeline_model(first))
        started = time.monotonic()
        owners = [i for i, r in enumerate(requests) for _ in range(r.count)]
        watcher = _StepWatcher(
            owners,
            loaded.info.family,
            on_progress,
            is_cancelled,
            self.options.preview_interval_s if want_previews else None,
        )
        notes: tuple[str, ...] = ()
        try:
            images = self._run(loaded, requests, watcher, split=False)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            # One retry in a lighter mode before giving up: one image at a time, tiled VAE.
            logger.warning("out of memory on a batch of %d images; retrying lighter", len(owners))
            free_accelerator_memory()
            loaded.pipe.vae.enable_tiling()
            notes = ("ran out of GPU memory; retried one image at a time with VAE tiling",)
            try:
                images = self._run(loaded, requests, watcher, split=True)
            except Exception as retry_error:
                if is_out_of_memory(retry_error):
                    raise GenerationFailedError(
                        "out of GPU memory even one image at a time; try a smaller size"
                    ) from retry_error
                raise
            finally:
                if not self.options.vae_tiling:
                    loaded.pipe.vae.disable_tiling()
        elapsed = time.monotonic() - started
        self.last_preview_seconds = watcher.preview_seconds
        extras = self._metadata(loaded, first)
        return self._results(requests, images, owners, watcher.cancelled, elapsed, notes, extras)

    def _pipeline_model(self, request: GenerationRequest) -> str:
        """The model whose pipeline runs `request`: for zoom out, the inpainting model its
        model's spec names (loaded like any other, so max_resident_models holds), else its own.

        Raises ModelError for a request an inpainting (9-channel) model cannot run."""
        name = request.model
        spec = self.models.get(name)
        if request.operation == "zoom_out" and spec is not None and spec.inpainting:
            if spec.inpainting not in self.models:
                known = ", ".join(sorted(self.models))
                raise ModelError(
                    f"model {name!r}: its inpainting model {spec.inpainting!r} is not "
                    f"configured; available: {known}"
                )
            return spec.inpainting
        if request.operation != "zoom_out" and self.model_info(name).inpainting:
            raise ModelError(
                f"model {name!r} is an inpainting model: it can only zoom out pictures; "
                "choose another model for this"
            )
        return name

    def _run(
        self,
        loaded: _Loaded,
        requests: Sequence[GenerationRequest],
        watcher: _StepWatcher,
        *,
        split: bool,
    ) -> list[Image.Image]:
        import torch

        first = requests[0]
        prepared = None if first.source is None else prepare_source(first, self._upscale)
        pipe = loaded.pipe if prepared is None else self._derived(loaded, prepared.task)
        seeds = [seed for r in requests for seed in r.seeds()]
        # The batch shares one LoRA set (it is in the batch key); set exactly it, so nothing
        # of the previous batch's stays. Embedding names are spelt as they were loaded.
        loaded.addons.apply(first.loras)
        prepare = loaded.addons.prepare_prompt
        prompts = [prepare(r.prompt) for r in requests for _ in range(r.count)]
        negatives = [prepare(r.negative_prompt) for r in requests for _ in range(r.count)]
        chunks = [[i] for i in range(len(seeds))] if split else [list(range(len(seeds)))]
        large = first.width * first.height > self.tiling_pixels
        images: list[Image.Image] = []
        for chunk in chunks:
            # Fresh scheduler per call: schedulers keep per-run state (step index, history).
            pipe.scheduler = make_scheduler(
                first.sampler, loaded.scheduler_config, trailing=loaded.info.variant == "turbo"
            )
            # CPU generators: the same seed gives the same noise on every device.
            generators = [torch.Generator("cpu").manual_seed(seeds[i]) for i in chunk]
            watcher.begin_call([watcher.owners[i] for i in chunk])
            arguments = _source_arguments(prepared, len(chunk), first.width, first.height)
            with vae_tiling(pipe.vae, large and prepared is not None), torch.inference_mode():
                # A1111's prompt language: weights, BREAK, 75-token chunks; <lora:…> removed.
                embeddings = encode_prompts(
                    pipe,
                    loaded.info.family,
                    [prompts[i] for i in chunk],
                    [negatives[i] for i in chunk],
                    clip_skip=self._clip_skip(loaded),
                )
                output = pipe(
                    **embeddings,
                    num_inference_steps=first.steps,
                    guidance_scale=first.guidance,
                    generator=generators,
                    callback_on_step_end=watcher,
                    callback_on_step_end_tensor_inputs=["latents"],
                    output_type="pil",
                    **arguments,
                )
            if prepared is not None:
                images.extend(overlay_kept(image, prepared) for image in output.images)
            else:
                images.extend(output.images)
        return images

    def _clip_skip(self, loaded: _Loaded) -> int:
        return self.models[loaded.info.name].clip_skip or 1

    def _derived(self, loaded: _Loaded, task: str) -> Any:
        """The image-to-image or inpainting pipeline sharing `loaded`'s weights (built once)."""
        if task not in loaded.derived:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            auto = AutoPipelineForImage2Image if task == "img2img" else AutoPipelineForInpainting
            # With a 4-channel (text-to-image) UNet the inpainting pipeline keeps the unmasked
            # region by blending the picture's noised latents back in at every step.
            derived = auto.from_pipe(loaded.pipe)
            derived.set_progress_bar_config(**getattr(loaded.pipe, "_progress_bar_config", {}))
            loaded.derived[task] = derived
        return loaded.derived[task]

    def _upscale(self, image: Image.Image, name: str) -> Image.Image:
        """`image` through the configured upscaler model `name` (its own factor)."""
        from inference.upscalers import load_upscaler, upscale_image

        if name not in self.upscalers:
            known = ", ".join(sorted(self.upscalers)) or "none configured"
            raise ModelError(f"upscaler: unknown upscaler {name!r}; available: {known}")
        if self._upscaler is None or self._upscaler.name != name:
            self._upscaler = None  # one upscaler resident at a time: drop before loading
            started = time.monotonic()
            self._upscaler = load_upscaler(
                self.upscalers[name], self.placement.device, self.placement.dtype
            )
            logger.info(
                "loaded upscaler %s (×%d) in %.1f s",
                name,
                self._upscaler.scale,
                time.monotonic() - started,
            )
        return upscale_image(self._upscaler, image)

    def _metadata(self, loaded: _Loaded, request: GenerationRequest) -> dict[str, str]:
        """A1111's fields that only the engine knows, for the PNGs' parameters."""
        extras = {}
        if (clip_skip := self._clip_skip(loaded)) > 1:
            extras["Clip skip"] = str(clip_skip)
        if hashes := loaded.addons.lora_hashes(request.loras):
            extras["Lora hashes"] = hashes
        return extras

    @staticmethod
    def _results(
        requests: Sequence[GenerationRequest],
        images: list[Image.Image],
        owners: list[int],
        cancelled: set[int],
        elapsed: float,
        notes: tuple[str, ...],
        extras: dict[str, str],
    ) -> list[GenerationResult | None]:
        results: list[GenerationResult | None] = []
        for index, request in enumerate(requests):
            if index in cancelled:
                results.append(None)
                continue
            own = [images[k] for k, owner in enumerate(owners) if owner == index]
            generated = tuple(
                GeneratedImage(
                    png=encode_png(image, parameters_text(request, seed, extras=extras)),
                    seed=seed,
                    width=image.width,
                    height=image.height,
                )
                for image, seed in zip(own, request.seeds(), strict=True)
            )
            grid = None
            if len(own) > 1:
                sheet = make_grid(own)
                grid = encode_png(sheet, parameters_text(request, request.seed, sheet.size, extras))
            results.append(GenerationResult(request, generated, grid, elapsed, notes))
        return results


def _source_arguments(
    prepared: PreparedSource | None, count: int, width: int, height: int
) -> dict[str, Any]:
    """The pipeline call's arguments that depend on the operation. One starting image per
    generated image: with a list of generators diffusers encodes image i with generator i."""
    if prepared is None:
        return {"width": width, "height": height}
    arguments: dict[str, Any] = {"image": [prepared.image] * count, "strength": prepared.strength}
    if prepared.task == "inpaint":
        arguments |= {"mask_image": [prepared.mask] * count, "width": width, "height": height}
    return arguments
