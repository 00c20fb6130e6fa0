"""ImagineBot: the discord.py client. Its dependencies are passed in, never opened here."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot.actions import Actions
from bot.cogs.admin import AdminCog
from bot.cogs.history import HistoryCog
from bot.cogs.imagine import ImagineCog
from bot.cogs.reactions import ReactionsCog
from bot.cogs.user_settings import SettingsCog
from bot.delivery import Deliverer, DeliveryPolicy
from bot.errors import user_message
from bot.limits import RateLimiter
from bot.render import clip
from bot.settings import Settings
from bot.store import Store
from bot.submission import Submitter
from bot.views import ImageActionButton, ResultView
from inference.queue import JobQueue

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: Store
    queue: JobQueue
    limiter: RateLimiter
    submitter: Submitter


def point_discord_at(api_base: str, gateway_url: str) -> None:
    """Talk to a Discord-compatible server (the e2e tests' local one) instead of Discord.

    discord.py has no public option for another API host, so this sets the class attributes it
    reads. They are not public API: pyproject pins discord.py to 2.7, and a test covers this."""
    discord.http.Route.BASE = api_base.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


class ImagineBot(commands.Bot):
    def __init__(self, services: Services, *, guild_ready_timeout: float = 2.0) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        intents.guild_reactions = True  # not privileged; slash commands need no content intent
        intents.guild_messages = True  # not privileged: tells us a job's message was deleted
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            guild_ready_timeout=guild_ready_timeout,
            # Prompts are echoed into messages: by default nothing pings anyone. A send that
            # should ping the requester allows exactly that user.
            allowed_mentions=discord.AllowedMentions.none(),
        )
        self.services = services
        delivery = services.settings.delivery
        self.delivery = Deliverer(
            self,
            services.store,
            services.queue,
            services.limiter,
            services.settings.progress.edit_interval_s,
            DeliveryPolicy(
                delivery.attempt_timeout_s, delivery.retry_delays_s, delivery.shutdown_grace_s
            ),
        )
        self.actions = Actions(self)

    async def setup_hook(self) -> None:
        for cog in (
            ImagineCog(self),
            ReactionsCog(self),
            HistoryCog(self),
            AdminCog(self),
            SettingsCog(self),
        ):
            await self.add_cog(cog)
        self.add_view(ResultView(self))  # persistent buttons survive restarts
        self.add_dynamic_items(ImageActionButton)
        self.tree.error(self.on_app_command_error)  # the tree's documented hook
        await self._sync_commands()
        await self.delivery.resume_after_restart()

    async def _sync_commands(self) -> None:
        guild_ids = self.services.settings.discord.guild_ids
        if guild_ids:
            for guild_id in guild_ids:
                guild = discord.Object(id=guild_id)
                self.tree.copy_global_to(guild=guild)
                await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()
        logger.info("slash commands synced (%s)", "guilds" if guild_ids else "global")

    async def on_ready(self) -> None:
        logger.info(
            "connected as %s (%s) to %d guilds",
            self.user,
            self.user and self.user.id,
            len(self.guilds),
        )

    async def on_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        """The one place errors become replies: ephemeral, friendly, never a traceback."""
        original = getattr(error, "original", error)
        text = user_message(original)
        if text.startswith("❌ Something went wrong"):
            command = interaction.command.name if interaction.command else "?"
            logger.error("/%s failed for user %s", command, interaction.user.id, exc_info=original)
        await self.reply_ephemeral(interaction, text)

    @staticmethod
    async def reply_ephemeral(interaction: discord.Interaction, text: str) -> None:
        text = clip(text)  # an over-long reply would be refused: the user gets nothing
        try:
            if (
                interaction.response.type
                is discord.InteractionResponseType.deferred_channel_message
            ):
                # A public "thinking…" would stay forever: the refusal replaces it, privately.
                with contextlib.suppress(discord.HTTPException):
                    await interaction.delete_original_response()
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except discord.HTTPException as error:
            logger.info("could not send an error reply: %s", error)

    async def close(self) -> None:
        await self.delivery.close()
        await super().close()
