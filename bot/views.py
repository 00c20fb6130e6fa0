"""The buttons under a result, and the Remix form.

Every button has a fixed custom id and carries no state but the image's index: the job is found
by the message the button is on, so the buttons keep working after a restart (`ResultView`
registered with `bot.add_view`, `ImageActionButton` with `bot.add_dynamic_items`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal, get_args

import discord

if TYPE_CHECKING:
    from bot.client import ImagineBot

REROLL = "🔄"
DELETE = "❌"

ImageAction = Literal["upscale", "subtle", "strong", "remix", "zoom"]
IMAGE_ACTIONS: tuple[ImageAction, ...] = get_args(ImageAction)
MAX_PROMPT_INPUT = 4000  # Discord's cap on a text input's length


class ResultView(discord.ui.View):
    """The buttons under a result: per-image actions, then re-roll and delete.

    One image: Upscale, Vary (subtle), Vary (strong), Remix, Zoom out. A set of 2–4: U1…U4
    (upscale image i) and V1…V4 (vary image i strongly). `ResultView(bot)` with no images is
    the instance registered at start-up, which routes the fixed re-roll and delete ids.
    """

    def __init__(
        self,
        bot: ImagineBot | None = None,
        image_count: int = 0,
        *,
        upscale_factor: float = 2.0,
        zoom_factor: float = 1.5,
    ) -> None:
        super().__init__(timeout=None)
        self.bot = bot
        if image_count == 1:
            actions: tuple[tuple[ImageAction, str], ...] = (
                ("upscale", f"Upscale ×{upscale_factor:g}"),
                ("subtle", "Vary (subtle)"),
                ("strong", "Vary (strong)"),
                ("remix", "Remix"),
                ("zoom", f"Zoom out ×{zoom_factor:g}"),
            )
            for action, label in actions:
                self.add_item(ImageActionButton(action, 0, label=label, row=0))
        elif image_count > 1:
            for index in range(min(image_count, 5)):
                self.add_item(ImageActionButton("upscale", index, label=f"U{index + 1}", row=0))
            for index in range(min(image_count, 5)):
                self.add_item(ImageActionButton("strong", index, label=f"V{index + 1}", row=1))

    @discord.ui.button(emoji=REROLL, label="Re-roll", custom_id="imagine:reroll", row=4)
    async def reroll(self, interaction: discord.Interaction, _: discord.ui.Button) -> None:
        assert self.bot is not None
        await self.bot.actions.reroll_from_button(interaction)

    @discord.ui.button(emoji=DELETE, label="Delete", custom_id="imagine:delete", row=4)
    async def delete(self, interaction: discord.Interaction, _: discord.ui.Button) -> None:
        assert self.bot is not None
        await self.bot.actions.delete_from_button(interaction)


class ImageActionButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"imagine:(?P<action>upscale|subtle|strong|remix|zoom):(?P<index>[0-9])",
):
    """One action on image `index` of the result it sits under."""

    def __init__(
        self, action: ImageAction, index: int, *, label: str = "", row: int | None = None
    ) -> None:
        style = (
            discord.ButtonStyle.primary if action == "upscale" else discord.ButtonStyle.secondary
        )
        super().__init__(
            discord.ui.Button(
                label=label or action, style=style, custom_id=f"imagine:{action}:{index}", row=row
            )
        )
        self.action: ImageAction = action
        self.index = index

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> ImageActionButton:
        action = next(a for a in IMAGE_ACTIONS if a == match["action"])  # the template's
        return cls(action, int(match["index"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        bot: ImagineBot = interaction.client  # type: ignore[assignment]
        await bot.actions.from_image_button(interaction, self.action, self.index)


class RemixModal(discord.ui.Modal, title="Remix"):
    """The prompt (and negative prompt) to edit before a strong variation of the image."""

    def __init__(
        self, bot: ImagineBot, job_id: int, index: int, prompt: str, negative: str, max_chars: int
    ) -> None:
        super().__init__(timeout=15 * 60, custom_id=f"imagine:remix-form:{job_id}:{index}")
        self.bot = bot
        self.job_id = job_id
        self.index = index
        limit = min(max_chars, MAX_PROMPT_INPUT)
        self.prompt: discord.ui.TextInput[RemixModal] = discord.ui.TextInput(
            label="Prompt",
            custom_id="prompt",
            style=discord.TextStyle.paragraph,
            default=prompt[:limit],
            max_length=limit,
        )
        self.negative: discord.ui.TextInput[RemixModal] = discord.ui.TextInput(
            label="Negative prompt",
            custom_id="negative",
            style=discord.TextStyle.paragraph,
            default=negative[:limit] or None,
            max_length=limit,
            required=False,
        )
        self.add_item(self.prompt)
        self.add_item(self.negative)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.bot.actions.remix_submitted(
            interaction, self.job_id, self.index, self.prompt.value, self.negative.value
        )
