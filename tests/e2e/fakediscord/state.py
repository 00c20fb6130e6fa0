"""Everything the fake server knows: users, guilds, channels, messages, commands, interactions.

The state changes synchronously; every change wakes waiters (``changes``) and, where Discord
would, goes out to the gateway through ``events``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from .changes import ChangeFeed
from .commands import CommandSync, RegisteredCommand
from .constants import (
    ALL_PERMISSIONS,
    BOT_DEFAULT_PERMISSIONS,
    DEFAULT_ATTACHMENT_SIZE_LIMIT,
    EVERYONE_DEFAULT_PERMISSIONS,
    MAX_ATTACHMENTS,
    MAX_CONTENT_LENGTH,
    MAX_EMBEDS,
    ChannelType,
    ErrorCode,
    Intent,
    MessageFlag,
    MessageType,
    Permission,
)
from .errors import DiscordHTTPError, field_error
from .interactions import InteractionHandle
from .models import (
    Attachment,
    Channel,
    Guild,
    Member,
    MessageRecord,
    PermissionOverwrite,
    Role,
    User,
    emoji_payload,
    guess_content_type,
    image_dimensions,
)
from .multipart import MessageBody
from .util import Clock, SnowflakeFactory

_MENTION = re.compile(r"<@!?(\d+)>")
# Flags a sender may set on a message; EPHEMERAL only on an interaction's first message.
_SETTABLE_FLAGS = (1 << 2) | MessageFlag.SUPPRESS_NOTIFICATIONS | (1 << 15)
# Discord checks an enforced nonce against "the past few minutes"; the fake says five.
NONCE_WINDOW_S = 5 * 60.0
MAX_NONCE_LENGTH = 25


@dataclass
class Settings:
    """Knobs a test may turn, before or while the server runs."""

    token: str
    heartbeat_interval_ms: int = 41_250
    interaction_token_lifetime: float = 15 * 60.0
    ack_deadline: float = 3.0
    attachment_size_limit: int = DEFAULT_ATTACHMENT_SIZE_LIMIT
    compress: bool = True  # honour ?compress=zlib-stream
    allowed_privileged_intents: int = 0
    enforce_intents: bool = True  # only send events the session's intents ask for
    ack_heartbeats: bool = True  # False makes a zombie connection
    # GET /gateway/bot's "shards"; None: one per 1,000 guilds (at least 1), as Discord does
    recommended_shards: int | None = None
    # A session (a shard, or the whole bot unsharded) that would get more guilds than this is
    # closed with 4011 Sharding required, as Discord does past 2,500.
    max_guilds_per_session: int = 2500


class EventSink(Protocol):
    """Where the state sends gateway events (the gateway, or nowhere before it exists)."""

    def dispatch(
        self, event: str, data: dict[str, Any], *, guild_id: int | None, intent: int | None
    ) -> None: ...

    def dispatch_guild_create(self, guild: Guild) -> None: ...


class _NoEvents:
    def dispatch(
        self, event: str, data: dict[str, Any], *, guild_id: int | None, intent: int | None
    ) -> None:
        pass

    def dispatch_guild_create(self, guild: Guild) -> None:
        pass


class ServerState:
    """The in-memory world. Route handlers and the test driver both change it."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.changes = ChangeFeed()
        self.next_id = SnowflakeFactory(clock)
        self.events: EventSink = _NoEvents()
        self.base_url = "http://127.0.0.1:0"  # set when the server has bound its port

        self.users: dict[int, User] = {}
        self.guilds: dict[int, Guild] = {}
        self.dm_channels: dict[int, Channel] = {}  # by recipient id
        self.messages: dict[int, MessageRecord] = {}
        self.attachments: dict[int, Attachment] = {}
        self.commands: dict[int, RegisteredCommand] = {}
        self.command_syncs: list[CommandSync] = []
        self.interactions: dict[int, InteractionHandle] = {}
        self.nonces: dict[tuple[int, str], int] = {}  # (author id, nonce) -> newest message id

        self.bot_user = self.add_user("imagine-bot", bot=True)
        self.application_id = self.bot_user.id  # as for every app made since 2020
        self.owner = self.add_user("owner")

    # --- world building -----------------------------------------------------------------------

    def add_user(self, username: str, *, bot: bool = False, global_name: str | None = None) -> User:
        user = User(id=self.next_id(), username=username, bot=bot, global_name=global_name)
        self.users[user.id] = user
        self.changes.notify()
        return user

    def add_guild(
        self, name: str, *, owner: User | None = None, shard: tuple[int, int] | None = None
    ) -> Guild:
        """A guild with @everyone, the bot (and its managed role) and the owner as members;
        with ``shard=(shard_id, count)``, its id routes it to that shard."""
        owner = owner or self.owner
        guild = Guild(id=self.next_id(shard), name=name, owner_id=owner.id)
        guild.roles[guild.id] = Role(
            id=guild.id,
            guild_id=guild.id,
            name="@everyone",
            permissions=EVERYONE_DEFAULT_PERMISSIONS,
        )
        bot_role = Role(
            id=self.next_id(),
            guild_id=guild.id,
            name=self.bot_user.username,
            permissions=BOT_DEFAULT_PERMISSIONS,
            position=1,
            managed=True,
            bot_id=self.bot_user.id,
        )
        guild.roles[bot_role.id] = bot_role
        now = self.clock.wall()
        guild.members[owner.id] = Member(user=owner, guild_id=guild.id, joined_at=now)
        guild.members[self.bot_user.id] = Member(
            user=self.bot_user, guild_id=guild.id, role_ids=[bot_role.id], joined_at=now
        )
        self.guilds[guild.id] = guild
        self.events.dispatch_guild_create(guild)
        self.changes.notify()
        return guild

    def bot_role(self, guild: Guild) -> Role:
        return next(r for r in guild.roles.values() if r.bot_id == self.bot_user.id)

    def add_role(
        self, guild: Guild, name: str, permissions: int = 0, *, position: int | None = None
    ) -> Role:
        role = Role(
            id=self.next_id(),
            guild_id=guild.id,
            name=name,
            permissions=int(permissions),
            position=len(guild.roles) if position is None else position,
        )
        guild.roles[role.id] = role
        self.events.dispatch(
            "GUILD_ROLE_CREATE",
            {"guild_id": str(guild.id), "role": role.to_payload()},
            guild_id=guild.id,
            intent=Intent.GUILDS,
        )
        self.changes.notify()
        return role

    def add_member(self, guild: Guild, user: User, roles: Iterable[Role] = ()) -> Member:
        member = Member(
            user=user,
            guild_id=guild.id,
            role_ids=[r.id for r in roles],
            joined_at=self.clock.wall(),
        )
        guild.members[user.id] = member
        self.events.dispatch(
            "GUILD_MEMBER_ADD",
            {**member.to_payload(), "guild_id": str(guild.id)},
            guild_id=guild.id,
            intent=Intent.GUILD_MEMBERS,
        )
        self.changes.notify()
        return member

    def add_channel(
        self,
        guild: Guild,
        name: str,
        *,
        type: int = ChannelType.GUILD_TEXT,
        overwrites: Iterable[PermissionOverwrite] = (),
        topic: str | None = None,
    ) -> Channel:
        channel = Channel(
            id=self.next_id(),
            type=type,
            name=name,
            guild_id=guild.id,
            position=len(guild.channels),
            topic=topic,
            overwrites=list(overwrites),
        )
        guild.channels[channel.id] = channel
        self.events.dispatch(
            "CHANNEL_CREATE", channel.to_payload(), guild_id=guild.id, intent=Intent.GUILDS
        )
        self.changes.notify()
        return channel

    def dm_channel(self, user: User) -> Channel:
        channel = self.dm_channels.get(user.id)
        if channel is None:
            channel = Channel(id=self.next_id(), type=ChannelType.DM, name=None, recipients=[user])
            self.dm_channels[user.id] = channel
            self.changes.notify()
        return channel

    # --- lookups ----------------------------------------------------------------------------

    def channel(self, channel_id: int) -> Channel | None:
        for guild in self.guilds.values():
            found = guild.channels.get(channel_id)
            if found is not None:
                return found
        return next((c for c in self.dm_channels.values() if c.id == channel_id), None)

    def require_channel(self, channel_id: int) -> Channel:
        channel = self.channel(channel_id)
        if channel is None:
            raise DiscordHTTPError(404, ErrorCode.UNKNOWN_CHANNEL, "Unknown Channel")
        return channel

    def guild_of(self, channel: Channel) -> Guild | None:
        return None if channel.guild_id is None else self.guilds.get(channel.guild_id)

    def permissions_for(self, guild: Guild, user_id: int, channel: Channel | None = None) -> int:
        """Discord's permission computation: base from roles, then channel overwrites."""
        if user_id == guild.owner_id:
            return ALL_PERMISSIONS
        member = guild.members.get(user_id)
        if member is None:
            return 0
        permissions = guild.everyone.permissions
        for role_id in member.role_ids:
            role = guild.roles.get(role_id)
            if role is not None:
                permissions |= role.permissions
        if permissions & Permission.ADMINISTRATOR:
            return ALL_PERMISSIONS
        if channel is None:
            return permissions
        overwrites = {(o.type, o.id): o for o in channel.overwrites}
        everyone = overwrites.get((0, guild.id))
        if everyone is not None:
            permissions = (permissions & ~everyone.deny) | everyone.allow
        allow = deny = 0
        for role_id in member.role_ids:
            overwrite = overwrites.get((0, role_id))
            if overwrite is not None:
                allow |= overwrite.allow
                deny |= overwrite.deny
        permissions = (permissions & ~deny) | allow
        own = overwrites.get((1, user_id))
        if own is not None:
            permissions = (permissions & ~own.deny) | own.allow
        return permissions

    def require_permissions(self, channel: Channel, user_id: int, needed: int) -> None:
        guild = self.guild_of(channel)
        if guild is None:
            return  # DMs have no permissions to check
        if self.permissions_for(guild, user_id, channel) & needed != needed:
            raise DiscordHTTPError(403, ErrorCode.MISSING_PERMISSIONS, "Missing Permissions")

    # --- messages ---------------------------------------------------------------------------

    def visible_message(self, channel_id: int, message_id: int) -> MessageRecord:
        """A message as the channel routes see it: not deleted, not ephemeral."""
        message = self.messages.get(message_id)
        if (
            message is None
            or message.channel_id != channel_id
            or message.deleted
            or message.ephemeral
        ):
            raise DiscordHTTPError(404, ErrorCode.UNKNOWN_MESSAGE, "Unknown Message")
        return message

    def message_by_nonce(self, author_id: int, nonce: str) -> MessageRecord | None:
        """The message ``author_id`` created with ``nonce`` in the last ``NONCE_WINDOW_S`` of
        the server's clock (what ``enforce_nonce`` answers with), if it still exists."""
        message = self.messages.get(self.nonces.get((author_id, nonce), 0))
        if message is None or message.deleted:
            return None
        if self.clock.wall() - message.created_at > NONCE_WINDOW_S:
            return None
        return message

    def messages_in(self, channel_id: int) -> list[MessageRecord]:
        return [m for m in self.messages.values() if m.channel_id == channel_id and not m.deleted]

    def create_message(
        self,
        channel: Channel,
        author: User,
        body: MessageBody,
        *,
        size_limit: int | None = None,
        flags: int = 0,
        type: int = MessageType.DEFAULT,
        interaction: InteractionHandle | None = None,
        interaction_metadata: dict[str, Any] | None = None,
        allow_empty: bool = False,
        nonce: str | None = None,
    ) -> MessageRecord:
        message = MessageRecord(
            id=self.next_id(),
            channel_id=channel.id,
            guild_id=channel.guild_id,
            author=author,
            created_at=self.clock.wall(),
            type=type,
            flags=flags,
            nonce=nonce,
        )
        if interaction is not None:
            message.interaction_id = interaction.id
            message.interaction_metadata = interaction_metadata
            message.webhook_id = self.application_id
            message.application_id = self.application_id
        reference = body.payload.get("message_reference")
        if isinstance(reference, dict) and reference.get("message_id"):
            message.message_reference = {
                "type": 0,
                "message_id": str(reference["message_id"]),
                "channel_id": str(channel.id),
                **({"guild_id": str(channel.guild_id)} if channel.guild_id else {}),
            }
            if message.type == MessageType.DEFAULT:
                message.type = MessageType.REPLY
        self._apply(message, body, size_limit=size_limit, creating=True, allow_empty=allow_empty)
        self.messages[message.id] = message
        if nonce is not None:
            self.nonces[(author.id, nonce)] = message.id
        channel.last_message_id = message.id
        self._dispatch_message("MESSAGE_CREATE", message)
        self.changes.notify()
        return message

    def edit_message(
        self, message: MessageRecord, body: MessageBody, *, size_limit: int | None = None
    ) -> MessageRecord:
        self._apply(message, body, size_limit=size_limit, creating=False, allow_empty=False)
        message.edited_at = message.history[-1].at
        self._dispatch_message("MESSAGE_UPDATE", message)
        self.changes.notify()
        return message

    def delete_message(self, message: MessageRecord) -> None:
        message.deleted = True
        message.deleted_at = self.clock.wall()
        if not message.ephemeral:
            data: dict[str, Any] = {"id": str(message.id), "channel_id": str(message.channel_id)}
            if message.guild_id is not None:
                data["guild_id"] = str(message.guild_id)
            self.events.dispatch(
                "MESSAGE_DELETE", data, guild_id=message.guild_id, intent=_message_intent(message)
            )
        self.changes.notify()

    def _dispatch_message(self, event: str, message: MessageRecord) -> None:
        if message.ephemeral:
            return  # ephemeral messages never reach the gateway
        self.events.dispatch(
            event,
            message.to_payload(viewer_id=self.bot_user.id),
            guild_id=message.guild_id,
            intent=_message_intent(message),
        )

    def _apply(
        self,
        message: MessageRecord,
        body: MessageBody,
        *,
        size_limit: int | None,
        creating: bool,
        allow_empty: bool,
    ) -> None:
        """Validate ``body`` against ``message`` as Discord would, then apply it and snapshot."""
        payload = body.payload
        content = payload.get("content", message.content if not creating else "")
        content = "" if content is None else str(content)
        embeds = payload.get("embeds", None if creating else message.embeds) or []
        if payload.get("embed"):
            embeds = [payload["embed"]]
        components = payload.get("components", None if creating else message.components) or []
        attachments = self._resolve_attachments(
            message, body, size_limit, creating, ephemeral=message.ephemeral
        )

        if len(content) > MAX_CONTENT_LENGTH:
            raise field_error(
                "content",
                f"Must be {MAX_CONTENT_LENGTH} or fewer in length.",
                "BASE_TYPE_MAX_LENGTH",
            )
        if len(embeds) > MAX_EMBEDS:
            raise field_error(
                "embeds", f"Must be {MAX_EMBEDS} or fewer in length.", "BASE_TYPE_MAX_LENGTH"
            )
        if len(attachments) > MAX_ATTACHMENTS:
            raise field_error(
                "attachments",
                f"Must be {MAX_ATTACHMENTS} or fewer in length.",
                "BASE_TYPE_MAX_LENGTH",
            )
        if not (
            content or embeds or attachments or components or payload.get("poll") or allow_empty
        ):
            raise DiscordHTTPError(
                400, ErrorCode.CANNOT_SEND_EMPTY_MESSAGE, "Cannot send an empty message"
            )

        message.content = content
        message.embeds = list(embeds)
        message.components = list(components)
        message.attachments = attachments
        message.mentions = [
            self.users[int(i)] for i in _MENTION.findall(content) if int(i) in self.users
        ]
        if "flags" in payload and payload["flags"] is not None:
            keep = message.flags & MessageFlag.EPHEMERAL
            message.flags = keep | (int(payload["flags"]) & _SETTABLE_FLAGS)
        if not allow_empty:
            message.flags &= ~MessageFlag.LOADING  # a filled-in deferred response stops loading
        message.snapshot(self.clock.wall())

    def _resolve_attachments(
        self,
        message: MessageRecord,
        body: MessageBody,
        size_limit: int | None,
        creating: bool,
        *,
        ephemeral: bool,
    ) -> list[Attachment]:
        """Which attachments the message has after this request.

        With an ``attachments`` list, exactly those: existing ones by id, new files by their
        ``files[n]`` index. Without it, the old attachments plus every uploaded file.
        """
        limit = self.settings.attachment_size_limit if size_limit is None else size_limit
        for part in body.files.values():
            if len(part.content) > limit:
                raise DiscordHTTPError(
                    413, ErrorCode.REQUEST_ENTITY_TOO_LARGE, "Request entity too large"
                )
        listed = body.payload.get("attachments")
        existing = {a.id: a for a in message.attachments}
        if listed is None:
            kept = [] if creating else list(message.attachments)
            return kept + [
                self._store_upload(message.channel_id, p.filename, p.content, None, ephemeral)
                for _, p in sorted(body.files.items())
            ]
        result: list[Attachment] = []
        for index, entry in enumerate(listed):
            raw_id = entry.get("id") if isinstance(entry, dict) else None
            try:
                attachment_id = int(raw_id)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise field_error(f"attachments.{index}.id", "Invalid attachment id") from None
            if attachment_id in body.files:
                part = body.files[attachment_id]
                filename = entry.get("filename") or part.filename
                result.append(
                    self._store_upload(
                        message.channel_id,
                        filename,
                        part.content,
                        entry.get("description"),
                        ephemeral,
                    )
                )
            elif attachment_id in existing:
                result.append(existing[attachment_id])
            else:
                raise field_error(f"attachments.{index}.id", "Unknown attachment or file index")
        return result

    def _store_upload(
        self,
        channel_id: int,
        filename: str,
        content: bytes,
        description: str | None,
        ephemeral: bool,
        content_type: str | None = None,
        declared_size: int | None = None,
    ) -> Attachment:
        """Keep a file and give it a CDN URL shaped like Discord's:
        ``/attachments/{channel}/{id}/{name}``, ``/ephemeral-attachments/...`` if ephemeral."""
        attachment_id = self.next_id()
        prefix = "ephemeral-attachments" if ephemeral else "attachments"
        dimensions = image_dimensions(content)
        attachment = Attachment(
            id=attachment_id,
            filename=filename,
            content=content,
            content_type=content_type or guess_content_type(filename, content),
            url=f"{self.base_url}/{prefix}/{channel_id}/{attachment_id}/{quote(filename)}",
            description=description,
            ephemeral=ephemeral,
            channel_id=channel_id,
            width=None if dimensions is None else dimensions[0],
            height=None if dimensions is None else dimensions[1],
            declared_size=declared_size,
        )
        self.attachments[attachment.id] = attachment
        return attachment

    def store_attachment(
        self,
        channel_id: int,
        filename: str,
        content: bytes,
        content_type: str | None = None,
        *,
        size: int | None = None,
        ephemeral: bool = True,
    ) -> Attachment:
        """An attachment a user uploads into a command option in channel ``channel_id``
        (``size``: the size to report, when not ``len(content)``)."""
        if size is not None and size < 0:
            raise ValueError("size must be >= 0")
        return self._store_upload(
            channel_id, filename, content, None, ephemeral, content_type, size
        )

    # --- reactions --------------------------------------------------------------------------

    def add_reaction(self, message: MessageRecord, emoji: str, user: User) -> bool:
        """Add ``user``'s reaction; False if it was already there (Discord then sends nothing)."""
        users = message.reactions.setdefault(emoji, [])
        if user.id in users:
            return False
        users.append(user.id)
        data = self._reaction_event(message, emoji, user.id)
        guild = self.guilds.get(message.guild_id) if message.guild_id else None
        if guild is not None and user.id in guild.members:
            data["member"] = guild.members[user.id].to_payload()
        data["message_author_id"] = str(message.author.id)
        data["burst"] = False
        data["burst_colors"] = []
        self.events.dispatch(
            "MESSAGE_REACTION_ADD",
            data,
            guild_id=message.guild_id,
            intent=_reaction_intent(message),
        )
        self.changes.notify()
        return True

    def remove_reaction(self, message: MessageRecord, emoji: str, user_id: int) -> bool:
        users = message.reactions.get(emoji, [])
        if user_id not in users:
            return False
        users.remove(user_id)
        if not users:
            del message.reactions[emoji]
        data = self._reaction_event(message, emoji, user_id)
        data["burst"] = False
        self.events.dispatch(
            "MESSAGE_REACTION_REMOVE",
            data,
            guild_id=message.guild_id,
            intent=_reaction_intent(message),
        )
        self.changes.notify()
        return True

    def clear_reactions(self, message: MessageRecord, emoji: str | None = None) -> None:
        data: dict[str, Any] = {
            "channel_id": str(message.channel_id),
            "message_id": str(message.id),
        }
        if message.guild_id is not None:
            data["guild_id"] = str(message.guild_id)
        if emoji is None:
            message.reactions.clear()
            event = "MESSAGE_REACTION_REMOVE_ALL"
        else:
            message.reactions.pop(emoji, None)
            data["emoji"] = emoji_payload(emoji)
            event = "MESSAGE_REACTION_REMOVE_EMOJI"
        self.events.dispatch(
            event, data, guild_id=message.guild_id, intent=_reaction_intent(message)
        )
        self.changes.notify()

    def _reaction_event(self, message: MessageRecord, emoji: str, user_id: int) -> dict[str, Any]:
        data: dict[str, Any] = {
            "type": 0,  # normal, not a burst ("super") reaction
            "user_id": str(user_id),
            "channel_id": str(message.channel_id),
            "message_id": str(message.id),
            "emoji": emoji_payload(emoji),
        }
        if message.guild_id is not None:
            data["guild_id"] = str(message.guild_id)
        return data

    # --- interactions -----------------------------------------------------------------------

    def new_interaction_token(self) -> str:
        return "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(48)

    def interaction_by_token(self, token: str) -> InteractionHandle | None:
        return next((i for i in self.interactions.values() if i.token == token), None)


def _message_intent(message: MessageRecord) -> int:
    return Intent.GUILD_MESSAGES if message.guild_id is not None else Intent.DIRECT_MESSAGES


def _reaction_intent(message: MessageRecord) -> int:
    if message.guild_id is not None:
        return Intent.GUILD_MESSAGE_REACTIONS
    return Intent.DIRECT_MESSAGE_REACTIONS
