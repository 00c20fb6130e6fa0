"""/imagine: options, or Midjourney-style inline flags, into a queued job."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import re
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.actions import actor_of
from bot.attachments import forget, image_source_from
from bot.delivery import DISCORD_FAILURES
from bot.errors import EXPECTED_ERRORS, user_message
from bot.flags import EXAMPLE, flag_for, parse_inline_flags
from inference.errors import InvalidRequestError
from inference.requests import ASPECT_CHOICES, MAX_SEED, NO_STYLE, RequestOptions
from inference.samplers import sampler_names
from inference.types import ImageSource

if TYPE_CHECKING:
    from bot.client import ImagineBot
    from bot.settings import Settings

# RequestOptions field -> this command's option, for errors in the words users typed (the
# inline flag's spelling comes from bot/flags.py, which owns the flags).
_OPTION_OF = {
    "negative_prompt": "negative",
    "aspect_ratio": "aspect",
    "steps": "steps",
    "guidance": "guidance",
    "seed": "seed",
    "sampler": "sampler",
    "model": "model",
    "style": "style",
    "count": "count",
}
DISCORD_MAX_OPTION_CHARS = 6000  # Discord's cap on a string option's max_length
# An attachment still downloading after this long is downloaded after acknowledging, so the
# interaction never misses Discord's 3 s.
ACK_BUDGET_S = 1.5


_LORA_OPTION = re.compile(r"\s*([^:<>\s]+)\s*(?::\s*(-?\d+(?:\.\d+)?)\s*)?")


def choices_matching(
    current: str, options: Iterable[tuple[str, str]]
) -> list[app_commands.Choice[str]]:
    """Autocomplete: the (label, value) pairs whose label holds what was typed, within
    Discord's 25 choices and 100 characters a label."""
    typed = current.lower()
    matching = (
        app_commands.Choice(name=label[:100], value=value)
        for label, value in options
        if typed in label.lower()
    )
    return list(itertools.islice(matching, 25))


def style_choices(settings: Settings, current: str) -> list[app_commands.Choice[str]]:
    """The configured styles and "none" (no style), for /imagine and /imagine-admin style."""
    return choices_matching(current, ((n, n) for n in [*settings.style_specs(), NO_STYLE]))


def lora_tag(option: str) -> str:
    """The `lora` option ("name" or "name:weight") as the prompt tag A1111 users write, so a
    LoRA chosen either way is one thing from here on (and the PNG shows it as A1111 does)."""
    match = _LORA_OPTION.fullmatch(option)
    if match is None:
        raise InvalidRequestError(
            "lora", f"{option!r} is not a LoRA name, or name:weight (e.g. add_detail:0.6)"
        )
    name, weight = match.group(1), match.group(2) or "1"
    return f"<lora:{name}:{weight}>"


def configure_option(
    command: app_commands.Command[Any, ..., Any], name: str, **changes: Any
) -> None:
    """Change an option of this cog's copy of `command` (min_value, max_value, description)
    before it is registered, e.g. from settings. discord.py fixes options when the class is
    defined (`app_commands.Range[int, 1, 150]`) and has no public setter; each cog instance
    holds its own copy of the command with its own `_params` dict, so replacing the entry
    changes this instance only. discord.py is pinned to 2.7 (pyproject); a test checks the
    payload Discord receives (tests/unit/test_limits.py)."""
    command._params[name] = dataclasses.replace(command._params[name], **changes)


class ImagineCog(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        # The option bounds Discord enforces in its client are the operator's [limits].
        # The prompt's bound covers its inline flags too.
        limits = bot.services.settings.limits
        prompt_chars = min(limits.max_prompt_chars, DISCORD_MAX_OPTION_CHARS)
        configure_option(self.imagine, "prompt", min_value=1, max_value=prompt_chars)
        configure_option(self.imagine, "steps", min_value=1, max_value=limits.max_steps)
        configure_option(self.imagine, "guidance", min_value=0.0, max_value=limits.max_guidance)
        configure_option(
            self.imagine,
            "count",
            min_value=1,
            max_value=limits.max_count,
            description=f"How many images (1-{limits.max_count})",
        )

    @app_commands.command(name="imagine")
    @app_commands.describe(
        prompt=f"What to draw. Inline flags work too: {EXAMPLE}",
        negative="What to keep out of the image",
        aspect="Shape of the image",
        steps="Denoising steps (more: slower, often finer)",
        guidance="How closely to follow the prompt (CFG scale)",
        seed="Same seed + same options = same image",
        sampler="Sampling method",
        model="Which model to use",
        style="A style from this server's list (none: no style)",
        lora="A LoRA, as name or name:weight (or <lora:name:weight> in the prompt)",
        count="How many images",  # the bound is added from settings in __init__
        image="Start from this picture (PNG, JPEG or WebP)",
        strength="With an image: how much to change it (0.05 a little - 1 all of it)",
    )
    @app_commands.choices(
        aspect=[app_commands.Choice(name=a, value=a) for a in ASPECT_CHOICES],
        sampler=[app_commands.Choice(name=s, value=s) for s in sampler_names()[:25]],
    )
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: str,  # prompt, steps, guidance, count: bounds from settings (__init__)
        negative: str | None = None,
        aspect: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        sampler: str | None = None,
        model: str | None = None,
        count: int | None = None,
        style: str | None = None,
        lora: str | None = None,
        image: discord.Attachment | None = None,
        strength: app_commands.Range[float, 0.05, 1.0] | None = None,
    ) -> None:
        """Generate an image from a text prompt"""
        given = {
            "negative_prompt": negative,
            "aspect_ratio": aspect,
            "steps": steps,
            "guidance": guidance,
            "seed": seed,
            "sampler": sampler,
            "model": model,
            "count": count,
            "style": style,
        }
        try:
            text, inline = parse_inline_flags(prompt)
            if lora is not None:
                text = f"{text} {lora_tag(lora)}"
            for field in inline:
                if given.get(field) is not None:
                    option, flag = _OPTION_OF[field], flag_for(field)
                    raise InvalidRequestError(
                        option, f"given both as the `{option}` option and as `{flag}`; keep one"
                    )
            merged = {k: v for k, v in given.items() if v is not None} | inline
            if strength is not None and image is None:
                raise InvalidRequestError(
                    "strength", "works only with an image; attach one with the `image` option"
                )
            options = RequestOptions(prompt=text, **merged)
        except EXPECTED_ERRORS as error:
            # Bad input is answered before deferring: instantly, and only to the user.
            await interaction.response.send_message(user_message(error), ephemeral=True)
            return
        source = None
        try:
            if image is not None:
                settings = self.bot.services.settings
                source = await self._within_deadline(
                    interaction,
                    image_source_from(image, settings, strength or settings.images.image_strength),
                )
                options = dataclasses.replace(options, source=source)
            submitter = self.bot.services.submitter
            options = await submitter.with_defaults(options, actor_of(interaction))
            request = await submitter.prepare(options, actor_of(interaction))
        except EXPECTED_ERRORS as error:
            forget(source, self.bot.services.settings)
            await self.bot.reply_ephemeral(interaction, user_message(error))
            return
        if await self.bot.actions.start(interaction, request) is None:
            forget(source, self.bot.services.settings)

    @staticmethod
    async def _within_deadline(
        interaction: discord.Interaction, work: Coroutine[Any, Any, ImageSource]
    ) -> ImageSource:
        """`work`'s result; if it takes longer than ACK_BUDGET_S, the interaction is deferred
        meanwhile (a refusal then replaces the "thinking" message, see reply_ephemeral)."""
        task = asyncio.ensure_future(work)
        try:
            done, _ = await asyncio.wait({task}, timeout=ACK_BUDGET_S)
            if not done:
                with contextlib.suppress(*DISCORD_FAILURES):
                    await interaction.response.defer(thinking=True)
            return await task
        finally:
            task.cancel()  # only when we were cancelled ourselves: a done task ignores it

    @imagine.autocomplete("lora")
    async def lora_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        specs = self.bot.services.settings.lora_specs().values()
        return choices_matching(
            current,
            (
                (f"{s.name} — triggers: {', '.join(s.triggers)}" if s.triggers else s.name, s.name)
                for s in specs
            ),
        )

    @imagine.autocomplete("style")
    async def style_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return style_choices(self.bot.services.settings, current)

    @imagine.autocomplete("model")
    async def model_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        models = self.bot.services.settings.models
        inpainting = {m.inpainting for m in models}  # for zoom out only, not for /imagine
        return choices_matching(
            current, ((m.name, m.name) for m in models if m.name not in inpainting)
        )
