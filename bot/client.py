"""ImagineBot: the discord.py client. Its dependencies are passed in, never opened here.

`make_bot` picks the class from `[discord] shards`: ImagineBot (one gateway connection) or
ShardedImagineBot (discord.py's AutoShardedBot: one connection per shard), which Discord
requires past 2,500 servers. Both behave the same otherwise.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

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


def make_bot(services: Services) -> ImagineBot:
    """The bot `[discord] shards` asks for: "off" is ImagineBot; "auto" (as many shards as
    GET /gateway/bot recommends) or a number is ShardedImagineBot."""
    shards = services.settings.discord.shards
    if shards == "off":
        logger.info("gateway: one connection (discord.shards = off)")
        return ImagineBot(services)
    shard_count = shards if isinstance(shards, int) else None
    if shard_count is None:
        logger.info("gateway: sharded, as many shards as Discord recommends (discord.shards)")
    else:
        logger.info("gateway: sharded, %d shards (discord.shards)", shard_count)
    return ShardedImagineBot(services, shard_count=shard_count)


class ImagineBot(commands.Bot):
    def __init__(
        self, services: Services, *, guild_ready_timeout: float = 2.0, **client_options: Any
    ) -> None:
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
            **client_options,
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

    @property
    def gateway_summary(self) -> str:
        """How the bot is connected, for the log."""
        return "one gateway connection"

    async def on_ready(self) -> None:
        logger.info(
            "connected as %s (%s) to %d guilds over %s",
            self.user,
            self.user and self.user.id,
            len(self.guilds),
            self.gateway_summary,
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


class ShardedImagineBot(ImagineBot, commands.AutoShardedBot):
    """ImagineBot over discord.py's AutoShardedBot: one gateway connection per shard, shard k
    serving the guilds with `(guild_id >> 22) % shard_count == k`. `shard_count=None` asks
    Discord (GET /gateway/bot) for its recommended count and connects where it says.

    It is an ImagineBot, so everything typed for one (cogs, views, delivery, actions) takes it.
    commands.Bot comes before AutoShardedBot in the MRO but defines nothing of its own (both
    are BotBase over a Client), so the gateway is AutoShardedClient's: `connect` launches
    every shard, `latency` averages them, `is_ws_ratelimited` asks each, guild readiness
    waits for every shard before on_ready. tests/e2e/test_sharding.py checks the MRO.
    """

    def __init__(
        self, services: Services, *, shard_count: int | None, guild_ready_timeout: float = 2.0
    ) -> None:
        super().__init__(services, guild_ready_timeout=guild_ready_timeout, shard_count=shard_count)
        self._logged_in = False

    @property
    def gateway_summary(self) -> str:
        return f"{self.shard_count} shards"

    async def login(self, token: str) -> None:
        self._logged_in = True  # login sets up what AutoShardedClient.close needs
        await super().login(token)

    async def close(self) -> None:
        if self._logged_in:
            await super().close()
        else:  # stopped before it started (a signal during warm-up): nothing is connected
            await self.delivery.close()

    async def on_shard_ready(self, shard_id: int) -> None:
        logger.info("shard %d of %d ready", shard_id, self.shard_count)
