"""/imagine-admin: per-guild channels, prompt blocklist and limits (Manage Server or a
configured moderator role)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.actions import has_rights
from bot.cogs.imagine import configure_option, style_choices
from bot.errors import UserFacingError
from bot.store import GuildSettings
from inference.errors import InvalidRequestError
from inference.requests import NO_STYLE

if TYPE_CHECKING:
    from bot.client import ImagineBot


class AdminOnly(UserFacingError, app_commands.CheckFailure):
    """A member without the rights used /imagine-admin. A CheckFailure, so discord.py hands it
    to the tree's error handler, which shows its text like any UserFacingError."""


def may_administer(member: discord.abc.User, moderator_role_ids: frozenset[int]) -> bool:
    return has_rights(member, "manage_guild", moderator_role_ids)


def refusal(moderator_role_ids: frozenset[int]) -> str:
    needed = "the **Manage Server** permission"
    if moderator_role_ids:
        roles = ", ".join(f"<@&{role_id}>" for role_id in sorted(moderator_role_ids))
        needed += f" or one of the moderator roles {roles}"
    return f"/imagine-admin changes this server's settings: it needs {needed}."


class AdminCog(commands.Cog):
    admin = app_commands.Group(
        name="imagine-admin",
        description="Server settings for /imagine",
        guild_only=True,
        default_permissions=discord.Permissions(manage_guild=True),
    )

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        # A member's queue cap cannot usefully exceed the whole queue's ([queue] max_queued).
        limits = self.admin.get_command("limits")
        assert isinstance(limits, app_commands.Command)
        configure_option(limits, "max_queued", max_value=bot.services.settings.queue.max_queued)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        """Runs before every command of this cog. `default_permissions` above only hides the
        commands by default: a server can hand them to anyone in its integration settings, so
        the rights are checked here, by the bot, every time."""
        moderator_role_ids = self.bot.services.settings.discord.moderator_role_ids
        if not may_administer(interaction.user, moderator_role_ids):
            raise AdminOnly(refusal(moderator_role_ids))
        return True

    async def _settings(self, interaction: discord.Interaction) -> GuildSettings:
        if interaction.guild_id is None:
            raise UserFacingError("these settings exist only in a server.")
        return await self.bot.services.store.guilds.get_guild_settings(interaction.guild_id)

    async def _save(self, interaction: discord.Interaction, settings: GuildSettings) -> None:
        await self.bot.services.store.guilds.set_guild_settings(settings)
        await interaction.response.send_message(describe(settings), ephemeral=True)

    @admin.command(name="show")
    async def show(self, interaction: discord.Interaction) -> None:
        """Show this server's /imagine settings"""
        await interaction.response.send_message(
            describe(await self._settings(interaction)), ephemeral=True
        )

    @admin.command(name="allow-channel")
    async def allow_channel(
        self, interaction: discord.Interaction, channel: discord.TextChannel
    ) -> None:
        """Let /imagine work in this channel (once any is set, only those channels)"""
        settings = await self._settings(interaction)
        channels = settings.allowed_channel_ids | {channel.id}
        await self._save(interaction, replace(settings, allowed_channel_ids=channels))

    @admin.command(name="disallow-channel")
    async def disallow_channel(
        self, interaction: discord.Interaction, channel: discord.TextChannel
    ) -> None:
        """Remove a channel from the allowed list (an empty list allows every channel)"""
        settings = await self._settings(interaction)
        channels = settings.allowed_channel_ids - {channel.id}
        await self._save(interaction, replace(settings, allowed_channel_ids=channels))

    @admin.command(name="block-word")
    async def block_word(
        self, interaction: discord.Interaction, word: app_commands.Range[str, 1, 100]
    ) -> None:
        """Refuse prompts containing this word or phrase"""
        settings = await self._settings(interaction)
        word = word.strip().lower()
        if word in settings.blocked_words:
            raise UserFacingError(f"{word!r} is already blocked.")
        await self._save(
            interaction, replace(settings, blocked_words=(*settings.blocked_words, word))
        )

    @admin.command(name="unblock-word")
    async def unblock_word(self, interaction: discord.Interaction, word: str) -> None:
        """Allow a blocked word again"""
        settings = await self._settings(interaction)
        words = tuple(w for w in settings.blocked_words if w != word.strip().lower())
        await self._save(interaction, replace(settings, blocked_words=words))

    @admin.command(name="limits")
    @app_commands.describe(
        images_per_window="Images one member may generate per window (0: bot default)",
        window_minutes="Length of the sliding window in minutes (0: bot default)",
        max_queued="Jobs one member may have waiting (0: bot default)",
    )
    async def limits(
        self,
        interaction: discord.Interaction,
        images_per_window: app_commands.Range[int, 0, 10000] | None = None,
        window_minutes: app_commands.Range[float, 0, 10080] | None = None,
        max_queued: app_commands.Range[int, 0] | None = None,  # max: settings (__init__)
    ) -> None:
        """Set this server's rate limits"""
        settings = await self._settings(interaction)
        changes: dict[str, Any] = {}
        for name, value in (
            ("images_per_window", images_per_window),
            ("window_minutes", window_minutes),
            ("max_queued", max_queued),
        ):
            if value is not None:
                changes[name] = value or None  # 0 means back to the bot-wide default
        await self._save(interaction, replace(settings, **changes))

    @admin.command(name="style")
    @app_commands.describe(style="The style for members who pick none (none: no default)")
    async def default_style(self, interaction: discord.Interaction, style: str) -> None:
        """Set this server's default style"""
        settings = await self._settings(interaction)
        known = self.bot.services.settings.style_specs()
        if style.lower() == NO_STYLE:
            chosen = None
        elif style in known:
            chosen = style
        else:
            available = ", ".join([*sorted(known), NO_STYLE])
            raise InvalidRequestError("style", f"unknown style {style!r}; available: {available}")
        await self._save(interaction, replace(settings, default_style=chosen))

    @default_style.autocomplete("style")
    async def style_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return style_choices(self.bot.services.settings, current)


def describe(settings: GuildSettings) -> str:
    channels = ", ".join(f"<#{c}>" for c in sorted(settings.allowed_channel_ids)) or "all"
    words = ", ".join(f"`{w}`" for w in settings.blocked_words) or "none"

    def limit(value: float | int | None) -> str:
        return "bot default" if value is None else f"{value:g}"

    return (
        f"**Channels:** {channels}\n**Blocked words:** {words}\n"
        f"**Images per window:** {limit(settings.images_per_window)} · "
        f"**Window (min):** {limit(settings.window_minutes)} · "
        f"**Max queued per member:** {limit(settings.max_queued)}\n"
        f"**Default style:** {settings.default_style or 'none'}"
    )
