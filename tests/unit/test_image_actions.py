"""The requests behind the buttons under a result (Submitter.prepare_from_image) and the
buttons themselves (ResultView): one rule each for strengths, seeds, counts, steps and sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.errors import NotFound
from bot.settings import Settings, load_settings
from bot.submission import Actor, Submitter
from bot.views import ResultView
from inference.errors import InvalidRequestError
from inference.fakes import FakeGenerator
from inference.jobs import JobOutcome, JobRecord, JobState, Owner, StoredImage
from inference.types import GenerationRequest

ACTOR = Actor(user_id=7, guild_id=None, channel_id=1)


def settings_for(tmp_path: Path, **env: str) -> Settings:
    environ = {"IMAGINE_BOT__STORAGE__DATA_DIR": str(tmp_path)}
    environ |= {f"IMAGINE_BOT__{key.upper()}": value for key, value in env.items()}
    return load_settings(None, environ)


def submitter(settings: Settings) -> Submitter:
    # prepare_from_image only reads settings and the model catalog (no guild: no store).
    return Submitter(settings, None, None, None, FakeGenerator())  # type: ignore[arg-type]


def finished_job(folder: Path, count: int = 1, steps: int = 4, size: int = 64) -> JobRecord:
    request = GenerationRequest(
        prompt="a kite",
        negative_prompt="rain",
        width=size,
        height=size,
        steps=steps,
        guidance=6.0,
        seed=40,
        sampler="Euler a",
        count=count,
        model="fake",
    )
    images = tuple(
        StoredImage(str(folder / f"job-3-{i}.png"), 40 + i, size, size) for i in range(count)
    )
    folder.mkdir(parents=True, exist_ok=True)
    for image in images:
        Path(image.path).touch()
    return JobRecord(
        id=3,
        owner=Owner(1),
        request=request,
        state=JobState.DONE,
        created_at=0.0,
        outcome=JobOutcome(images=images, grid_path=None, elapsed_s=1.0),
    )


async def test_upscale_keeps_the_image_seed_and_doubles_the_size(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    request = await submitter(settings).prepare_from_image(
        finished_job(tmp_path, 2), 1, "upscale", ACTOR
    )
    assert request.source is not None
    assert (request.source.operation, request.source.path) == (
        "upscale",
        str(tmp_path / "job-3-1.png"),
    )
    assert request.source.strength == settings.images.upscale_strength == 0.35
    assert (request.width, request.height, request.seed, request.count) == (128, 128, 41, 1)
    assert (request.prompt, request.negative_prompt, request.guidance) == ("a kite", "rain", 6.0)


async def test_variations_draw_a_new_seed_and_make_a_set_like_the_job(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, images__vary_subtle_strength="0.2")
    subtle = await submitter(settings).prepare_from_image(
        finished_job(tmp_path), 0, "subtle", ACTOR
    )
    strong = await submitter(settings).prepare_from_image(
        finished_job(tmp_path, 3), 2, "strong", ACTOR
    )
    assert subtle.source is not None and strong.source is not None
    assert (subtle.source.strength, subtle.count) == (0.2, 1)
    assert (strong.source.strength, strong.count, strong.source.path) == (
        0.6,
        3,
        str(tmp_path / "job-3-2.png"),
    )
    assert (strong.width, strong.height) == (64, 64)
    seeds = {
        (
            await submitter(settings).prepare_from_image(finished_job(tmp_path), 0, "subtle", ACTOR)
        ).seed
        for _ in range(4)
    }
    assert len(seeds) > 1  # drawn each time, not the parent's


async def test_a_low_strength_gets_enough_steps_for_one_denoising_step(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, images__upscale_strength="0.1")
    request = await submitter(settings).prepare_from_image(
        finished_job(tmp_path, steps=2), 0, "upscale", ACTOR
    )
    assert request.steps == 10  # 2 steps at 0.1 would run none


async def test_remix_uses_the_edited_prompt_and_zoom_out_the_factor(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, images__zoom_out_factor="2.0")
    remix = await submitter(settings).prepare_from_image(
        finished_job(tmp_path), 0, "remix", ACTOR, prompt="a kite in snow", negative_prompt=""
    )
    assert (remix.prompt, remix.negative_prompt) == ("a kite in snow", "")
    zoom = await submitter(settings).prepare_from_image(finished_job(tmp_path), 0, "zoom", ACTOR)
    assert zoom.source is not None and zoom.source.operation == "zoom_out"
    assert (zoom.width, zoom.height, zoom.seed) == (128, 128, 40)


async def test_past_the_size_limit_or_a_missing_image_is_refused(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, limits__max_pixels="16384")
    with pytest.raises(InvalidRequestError, match=r"128x128 upscaled ×2 would be 256x256"):
        await submitter(settings).prepare_from_image(
            finished_job(tmp_path, size=128), 0, "upscale", ACTOR
        )
    with pytest.raises(NotFound):
        await submitter(settings).prepare_from_image(finished_job(tmp_path), 1, "upscale", ACTOR)
    record = finished_job(tmp_path)
    (tmp_path / "job-3-0.png").unlink()
    with pytest.raises(NotFound, match="gone from the bot's disk"):
        await submitter(settings).prepare_from_image(record, 0, "subtle", ACTOR)


def test_buttons_one_image_gets_the_actions_a_set_gets_u_and_v() -> None:
    def ids(view: ResultView) -> list[tuple[int | None, str | None]]:
        # In the order Discord shows them: by row (discord.py sends rows in order).
        items = sorted(view.children, key=lambda item: item.row or 0)
        return [(item.row, getattr(item, "custom_id", None)) for item in items]

    single = ResultView(None, 1, upscale_factor=2.0, zoom_factor=1.5)
    assert [custom_id for _, custom_id in ids(single)] == [
        "imagine:upscale:0",
        "imagine:subtle:0",
        "imagine:strong:0",
        "imagine:remix:0",
        "imagine:zoom:0",
        "imagine:reroll",
        "imagine:delete",
    ]
    grid = ResultView(None, 4)
    assert [c for _, c in ids(grid)][:8] == [
        *(f"imagine:upscale:{i}" for i in range(4)),
        *(f"imagine:strong:{i}" for i in range(4)),
    ]
    rows = {row for row, _ in ids(grid)}
    assert len(rows) == 3  # U row, V row, re-roll/delete: within Discord's 5 rows of 5
    assert [c for _, c in ids(ResultView(None))] == ["imagine:reroll", "imagine:delete"]
