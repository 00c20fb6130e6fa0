"""/settings: a user's own defaults for /imagine (model, aspect, style, sampler, steps, count).

An ephemeral message with select menus; steps and count (numbers) go through a small form.
What a user types in /imagine always wins over these defaults (Submitter.with_defaults).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import user_message
from bot.render import clip
from bot.store import UserDefaults
from inference.errors import InvalidRequestError
from inference.requests import ASPECT_CHOICES, NO_STYLE
from inference.samplers import sampler_names

if TYPE_CHECKING:
    from bot.client import ImagineBot

UNSET = "__unset__"  # the select option that clears a default
MAX_SELECT_OPTIONS = 25  # Discord's cap on a select menu's options
VIEW_TIMEOUT_S = 10 * 60


class SettingsCog(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name="settings")
    async def settings(self, interaction: discord.Interaction) -> None:
        """Your defaults for /imagine: model, aspect, style, sampler, steps, count"""
        defaults = await self.bot.services.store.users.get_defaults(interaction.user.id)
        await interaction.response.send_message(
            describe(defaults), view=DefaultsView(self.bot, defaults), ephemeral=True
        )


def describe(defaults: UserDefaults) -> str:
    def shown(value: object) -> str:
        return "—" if value is None else f"`{value}`"

    return clip(  # names come from the config: keep the message within Discord's 2,000
        "**Your defaults for /imagine** (what you type in a command always wins; — means the "
        "model's or the server's default)\n"
        f"Model {shown(defaults.model)} · Aspect {shown(defaults.aspect_ratio)} · "
        f"Style {shown(defaults.style)} · Sampler {shown(defaults.sampler)} · "
        f"Steps {shown(defaults.steps)} · Count {shown(defaults.count)}"
    )


class DefaultsView(discord.ui.View):
    def __init__(self, bot: ImagineBot, defaults: UserDefaults) -> None:
        super().__init__(timeout=VIEW_TIMEOUT_S)
        self.bot = bot
        self.defaults = defaults
        settings = bot.services.settings
        choices: tuple[tuple[str, str, list[str]], ...] = (
            ("model", "Model", [m.name for m in settings.models]),
            ("aspect_ratio", "Aspect", list(ASPECT_CHOICES)),
            ("style", "Style", [*settings.style_specs(), NO_STYLE]),
            ("sampler", "Sampler", list(sampler_names())),
        )
        for row, (field, label, names) in enumerate(choices):
            self.add_item(DefaultSelect(field, label, names, getattr(defaults, field), row))

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return interaction.user.id == self.defaults.user_id  # the message is theirs alone

    async def save(self, interaction: discord.Interaction, **changes: Any) -> None:
        self.defaults = replace(self.defaults, **changes)
        await self.bot.services.store.users.set_defaults(self.defaults)
        await interaction.response.edit_message(
            content=describe(self.defaults), view=DefaultsView(self.bot, self.defaults)
        )

    @discord.ui.button(label="Steps & count…", custom_id="settings:numbers", row=4)
    async def numbers(self, interaction: discord.Interaction, _: discord.ui.Button[Any]) -> None:
        await interaction.response.send_modal(NumbersModal(self))

    @discord.ui.button(
        label="Reset all", style=discord.ButtonStyle.danger, custom_id="settings:reset", row=4
    )
    async def reset(self, interaction: discord.Interaction, _: discord.ui.Button[Any]) -> None:
        await self.save(interaction, **{k: None for k in self.defaults.as_options()})


class DefaultSelect(discord.ui.Select[DefaultsView]):
    def __init__(
        self, field: str, label: str, names: list[str], current: str | None, row: int
    ) -> None:
        shown = names[: MAX_SELECT_OPTIONS - 1]
        options = [discord.SelectOption(label=f"{label}: no default", value=UNSET)]
        options += [
            discord.SelectOption(label=name[:100], value=name[:100], default=name == current)
            for name in shown
        ]
        super().__init__(
            placeholder=f"{label}: {current or 'no default'}",
            options=options,
            custom_id=f"settings:{field}",
            row=row,
        )
        self.field = field

    async def callback(self, interaction: discord.Interaction) -> None:
        assert self.view is not None
        value = self.values[0]
        await self.view.save(interaction, **{self.field: None if value == UNSET else value})


class NumbersModal(discord.ui.Modal, title="Default steps and count"):
    def __init__(self, view: DefaultsView) -> None:
        super().__init__(timeout=VIEW_TIMEOUT_S, custom_id="settings:numbers-form")
        self.view = view
        limits = view.bot.services.settings.limits
        self.limits = limits
        defaults = view.defaults
        self.steps: discord.ui.TextInput[NumbersModal] = discord.ui.TextInput(
            label=f"Steps (1-{limits.max_steps}; empty: no default)",
            custom_id="steps",
            default=None if defaults.steps is None else str(defaults.steps),
            required=False,
            max_length=4,
        )
        self.count: discord.ui.TextInput[NumbersModal] = discord.ui.TextInput(
            label=f"Count (1-{limits.max_count}; empty: no default)",
            custom_id="count",
            default=None if defaults.count is None else str(defaults.count),
            required=False,
            max_length=2,
        )
        self.add_item(self.steps)
        self.add_item(self.count)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        try:
            steps = _number("steps", self.steps.value, self.limits.max_steps)
            count = _number("count", self.count.value, self.limits.max_count)
        except InvalidRequestError as error:
            await interaction.response.send_message(user_message(error), ephemeral=True)
            return
        await self.view.save(interaction, steps=steps, count=count)


def _number(field: str, text: str, highest: int) -> int | None:
    text = text.strip()
    if not text:
        return None
    if not text.isdecimal() or not 1 <= int(text) <= highest:
        raise InvalidRequestError(field, f"{text!r} is not a whole number from 1 to {highest}")
    return int(text)
