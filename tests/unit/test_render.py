"""What /history shows of where a job's picture came from."""

from __future__ import annotations

import pytest

from bot.render import discord_length, history_line, lineage_text, operation_text
from inference.jobs import JobRecord, JobState, Lineage, Owner
from inference.types import GenerationRequest, ImageSource

PICTURE = ImageSource("/data/41/1.png", 512, 768)


def request(source: ImageSource | None = None, prompt: str = "a lighthouse") -> GenerationRequest:
    return GenerationRequest(
        prompt=prompt,
        negative_prompt="",
        width=512,
        height=768,
        steps=20,
        guidance=7.0,
        seed=5,
        sampler="Euler a",
        count=1,
        model="sd15",
        source=source,
    )


def record(
    source: ImageSource | None = None,
    parent: Lineage | None = None,
    state: JobState = JobState.DONE,
    error: str | None = None,
) -> JobRecord:
    return JobRecord(
        id=42,
        owner=Owner(1, 2),
        request=request(source),
        state=state,
        created_at=0.0,
        error=error,
        parent=parent,
    )


@pytest.mark.parametrize(
    ("source", "parent", "text"),
    [
        (None, None, None),
        (
            ImageSource("/p.png", 512, 768, "upscale", 0.3, 2.0, "4x-UltraSharp"),
            Lineage(41, 1),
            "upscale ×2 of job 41, image 2",
        ),
        (
            ImageSource("/p.png", 512, 768, "img2img", 0.45),
            Lineage(41, 0),
            "variation of job 41, image 1",
        ),
        (
            ImageSource("/p.png", 512, 768, "zoom_out", 1.0, 1.5),
            Lineage(41, 0),
            "zoom out ×1.5 of job 41, image 1",
        ),
        (ImageSource("/up.png", 640, 480), None, "from an uploaded image"),
        (
            ImageSource("/up.png", 640, 480, "upscale", 0.3, 4.0),
            None,
            "upscale ×4 of an uploaded image",
        ),
    ],
)
def test_lineage_text(source: ImageSource | None, parent: Lineage | None, text: str | None) -> None:
    assert lineage_text(request(source), parent) == text


def test_operation_text_names_what_was_done_to_the_picture() -> None:
    assert operation_text(request()) is None
    assert operation_text(request(ImageSource("/p.png", 8, 8, "zoom_out", 1.0, 1.25))) == (
        "zoom out ×1.25"
    )
    assert operation_text(request(PICTURE)) == "variation"


def test_history_line_of_a_prompt_only_job_is_unchanged() -> None:
    assert history_line(record(), "https://discord.com/channels/2/3/4") == (
        "✅ **42** `a lighthouse` seed 5 — [open](https://discord.com/channels/2/3/4)"
    )


def test_history_line_shows_lineage_before_the_link_and_the_failure() -> None:
    upscale = ImageSource("/p.png", 512, 768, "upscale", 0.3, 2.0)
    line = history_line(
        record(upscale, Lineage(41, 1), JobState.FAILED, "out of memory"), "https://x/1"
    )
    assert line == (
        "❌ **42** `a lighthouse` seed 5 · ⤴ upscale ×2 of job 41, image 2"
        " — [open](https://x/1) — out of memory"
    )
    assert history_line(record(PICTURE), None) == (
        "✅ **42** `a lighthouse` seed 5 · ⤴ from an uploaded image"
    )


def test_lineage_adds_little_to_a_history_line() -> None:
    """/history fits ten lines in one message: the lineage of the largest ids and an
    unrounded scale stays short."""
    source = ImageSource("/p.png", 8, 8, "zoom_out", 1.0, 1.0000001)
    text = lineage_text(request(source), Lineage(2**63 - 1, 2**31))
    assert text == f"zoom out ×1 of job {2**63 - 1}, image {2**31 + 1}"
    assert discord_length(history_line(record(source, Lineage(2**63 - 1, 2**31)), None)) < 120
