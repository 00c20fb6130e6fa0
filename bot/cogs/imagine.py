"""/imagine: options, or Midjourney-style inline flags, into a queued job."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.actions import actor_of
from bot.errors import EXPECTED_ERRORS, user_message
from bot.flags import parse_inline_flags
from inference.errors import InvalidRequestError
from inference.requests import ASPECT_CHOICES, RequestOptions
from inference.samplers import sampler_names

if TYPE_CHECKING:
    from bot.client import ImagineBot

# RequestOptions field -> (slash option, inline flag), for errors in the words users typed.
_NAMES_USERS_TYPE = {
    "negative_prompt": ("negative", "--no"),
    "aspect_ratio": ("aspect", "--ar"),
    "steps": ("steps", "--steps"),
    "guidance": ("guidance", "--cfg"),
    "seed": ("seed", "--seed"),
    "sampler": ("sampler", "--sampler"),
    "model": ("model", "--model"),
    "count": ("count", "--n"),
}


class ImagineCog(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name="imagine")
    @app_commands.describe(
        prompt="What to draw. Inline flags work too: --ar 16:9 --seed 7 --no trees --steps 25",
        negative="What to keep out of the image",
        aspect="Shape of the image",
        steps="Denoising steps (more: slower, often finer)",
        guidance="How closely to follow the prompt (CFG scale)",
        seed="Same seed + same options = same image",
        sampler="Sampling method",
        model="Which model to use",
        count="How many images (1-4)",
    )
    @app_commands.choices(
        aspect=[app_commands.Choice(name=a, value=a) for a in ASPECT_CHOICES],
        sampler=[app_commands.Choice(name=s, value=s) for s in sampler_names()[:25]],
    )
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 1500],
        negative: str | None = None,
        aspect: str | None = None,
        steps: app_commands.Range[int, 1, 150] | None = None,
        guidance: app_commands.Range[float, 0.0, 30.0] | None = None,
        seed: app_commands.Range[int, 0, 4294967295] | None = None,
        sampler: str | None = None,
        model: str | None = None,
        count: app_commands.Range[int, 1, 4] | None = None,
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
        }
        try:
            text, inline = parse_inline_flags(prompt)
            for field in inline:
                if given.get(field) is not None:
                    option, flag = _NAMES_USERS_TYPE[field]
                    raise InvalidRequestError(
                        option, f"given both as the `{option}` option and as `{flag}`; keep one"
                    )
            merged = {k: v for k, v in given.items() if v is not None} | inline
            options = RequestOptions(prompt=text, **merged)
            request = await self.bot.services.submitter.prepare(options, actor_of(interaction))
        except EXPECTED_ERRORS as error:
            # Bad input is answered before deferring: instantly, and only to the user.
            await interaction.response.send_message(user_message(error), ephemeral=True)
            return
        await self.bot.actions.start(interaction, request)

    @imagine.autocomplete("model")
    async def model_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        names = [m.name for m in self.bot.services.settings.models]
        return [
            app_commands.Choice(name=n, value=n) for n in names if current.lower() in n.lower()
        ][:25]
