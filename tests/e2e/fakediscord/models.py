"""The fake server's in-memory records and their Discord JSON shapes."""

from __future__ import annotations

import io
import mimetypes
import struct
from dataclasses import dataclass, field
from typing import Any

from .constants import ChannelType, MessageFlag, MessageType
from .util import iso8601


@dataclass(eq=False)
class User:
    id: int
    username: str
    bot: bool = False
    global_name: str | None = None

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "avatar_decoration_data": None,
            "banner": None,
            "accent_color": None,
            "public_flags": 0,
            "flags": 0,
        }
        if self.bot:
            payload["bot"] = True
        return payload


@dataclass(eq=False)
class Role:
    id: int
    guild_id: int
    name: str
    permissions: int
    position: int = 0
    color: int = 0
    managed: bool = False
    bot_id: int | None = None  # the bot a managed bot role belongs to

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(self.id),
            "name": self.name,
            "color": self.color,
            "colors": {
                "primary_color": self.color,
                "secondary_color": None,
                "tertiary_color": None,
            },
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(self.permissions),
            "managed": self.managed,
            "mentionable": False,
            "flags": 0,
        }
        if self.bot_id is not None:
            payload["tags"] = {"bot_id": str(self.bot_id)}
        return payload


@dataclass(eq=False)
class Member:
    user: User
    guild_id: int
    role_ids: list[int] = field(default_factory=list)
    joined_at: float = 0.0
    nick: str | None = None

    @property
    def id(self) -> int:
        return self.user.id

    def to_payload(self, *, with_user: bool = True) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "roles": [str(role_id) for role_id in self.role_ids],
            "joined_at": iso8601(self.joined_at),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        if with_user:
            payload["user"] = self.user.to_payload()
        return payload


@dataclass(frozen=True)
class PermissionOverwrite:
    id: int
    type: int  # 0 role, 1 member
    allow: int = 0
    deny: int = 0

    def to_payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "type": self.type,
            "allow": str(self.allow),
            "deny": str(self.deny),
        }


@dataclass(eq=False)
class Channel:
    id: int
    type: int
    name: str | None
    guild_id: int | None = None
    position: int = 0
    topic: str | None = None
    parent_id: int | None = None
    overwrites: list[PermissionOverwrite] = field(default_factory=list)
    recipients: list[User] = field(default_factory=list)
    last_message_id: int | None = None

    @property
    def is_dm(self) -> bool:
        return self.type == ChannelType.DM

    def to_payload(self) -> dict[str, Any]:
        if self.is_dm:
            return {
                "id": str(self.id),
                "type": self.type,
                "last_message_id": _str_or_none(self.last_message_id),
                "flags": 0,
                "recipients": [user.to_payload() for user in self.recipients],
            }
        return {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [o.to_payload() for o in self.overwrites],
            "topic": self.topic,
            "nsfw": False,
            "last_message_id": _str_or_none(self.last_message_id),
            "rate_limit_per_user": 0,
            "parent_id": _str_or_none(self.parent_id),
            "flags": 0,
        }


@dataclass(eq=False)
class Guild:
    id: int
    name: str
    owner_id: int
    roles: dict[int, Role] = field(default_factory=dict)
    members: dict[int, Member] = field(default_factory=dict)
    channels: dict[int, Channel] = field(default_factory=dict)
    locale: str = "en-US"

    @property
    def everyone(self) -> Role:
        return self.roles[self.id]

    def to_payload(self) -> dict[str, Any]:
        """The guild object of GET /guilds/{id} (no channels or members, as in REST)."""
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [role.to_payload() for role in self.roles.values()],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "max_members": 500000,
            "vanity_url_code": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": self.locale,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
        }


@dataclass(frozen=True)
class Upload:
    """A file a simulated user attaches to a command option (option type 11); see
    ``FakeDiscord.attachment``. It is stored (and gets its id and CDN URL) when the command is
    invoked, in the invocation's channel. ``size``: the size Discord reports, when a test wants
    it to differ from ``len(content)`` (the CDN still serves ``content``)."""

    filename: str
    content: bytes
    content_type: str | None = None
    size: int | None = None


@dataclass(frozen=True, eq=False)
class Attachment:
    id: int
    filename: str
    content: bytes
    content_type: str | None
    url: str
    description: str | None = None
    ephemeral: bool = False
    channel_id: int | None = None
    width: int | None = None  # images only (what Pillow reads), as Discord reports them
    height: int | None = None
    declared_size: int | None = None  # reported instead of len(content) when set

    @property
    def size(self) -> int:
        return len(self.content) if self.declared_size is None else self.declared_size

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url,
        }
        if self.content_type:
            payload["content_type"] = self.content_type
        if self.description is not None:
            payload["description"] = self.description
        if self.ephemeral:
            payload["ephemeral"] = True
        if self.width is not None and self.height is not None:
            payload["width"], payload["height"] = self.width, self.height
        return payload


def guess_content_type(filename: str, content: bytes) -> str | None:
    """What Discord would report: by magic number first, then by extension."""
    if content.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if content.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if content[:4] == b"RIFF" and content[8:12] == b"WEBP":
        return "image/webp"
    guessed, _ = mimetypes.guess_type(filename)
    if guessed is not None and guessed.startswith("text/"):
        return f"{guessed}; charset=utf-8"
    return guessed


def png_dimensions(content: bytes) -> tuple[int, int] | None:
    if not content.startswith(b"\x89PNG\r\n\x1a\n") or len(content) < 24:
        return None
    width, height = struct.unpack(">II", content[16:24])
    return width, height


def image_dimensions(content: bytes) -> tuple[int, int] | None:
    """(width, height) when Pillow can decode ``content`` as an image, else None (Discord
    omits both for files that are not images)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a project dependency
        return png_dimensions(content)
    try:
        with Image.open(io.BytesIO(content)) as image:
            image.load()
            width, height = image.size
    except Exception:  # anything Pillow cannot decode is "not an image"
        return None
    return int(width), int(height)


@dataclass(frozen=True)
class MessageRevision:
    """A message as it looked after its creation or one edit."""

    at: float  # wall-clock time of the change
    content: str
    embeds: tuple[dict[str, Any], ...]
    attachments: tuple[Attachment, ...]
    components: tuple[dict[str, Any], ...]
    flags: int


@dataclass(eq=False)
class MessageRecord:
    """A message the server holds, with every revision it went through.

    ``history[0]`` is the message as created; each later entry is one edit. A deferred
    interaction response starts as an empty message with the LOADING flag (128).
    """

    id: int
    channel_id: int
    guild_id: int | None
    author: User
    created_at: float
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    flags: int = 0
    type: int = MessageType.DEFAULT
    mentions: list[User] = field(default_factory=list)
    reactions: dict[str, list[int]] = field(default_factory=dict)  # emoji key -> user ids
    message_reference: dict[str, Any] | None = None
    interaction_id: int | None = None
    interaction_metadata: dict[str, Any] | None = None
    webhook_id: int | None = None
    application_id: int | None = None
    edited_at: float | None = None
    nonce: str | None = None  # as sent by the author (channel message creates only)
    deleted: bool = False
    deleted_at: float | None = None
    history: list[MessageRevision] = field(default_factory=list)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & MessageFlag.EPHEMERAL)

    @property
    def loading(self) -> bool:
        """True while this is a deferred response nobody has filled in yet."""
        return bool(self.flags & MessageFlag.LOADING)

    @property
    def edits(self) -> list[MessageRevision]:
        return self.history[1:]

    @property
    def contents(self) -> list[str]:
        """The content of every revision, oldest first."""
        return [revision.content for revision in self.history]

    def snapshot(self, at: float) -> None:
        self.history.append(
            MessageRevision(
                at=at,
                content=self.content,
                embeds=tuple(self.embeds),
                attachments=tuple(self.attachments),
                components=tuple(self.components),
                flags=self.flags,
            )
        )

    def to_payload(self, *, viewer_id: int) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "type": int(self.type),
            "author": self.author.to_payload(),
            "content": self.content,
            "timestamp": iso8601(self.created_at),
            "edited_timestamp": None if self.edited_at is None else iso8601(self.edited_at),
            "tts": False,
            "mention_everyone": False,
            "mentions": [user.to_payload() for user in self.mentions],
            "mention_roles": [],
            "attachments": [attachment.to_payload() for attachment in self.attachments],
            "embeds": list(self.embeds),
            "components": list(self.components),
            "pinned": False,
            "flags": self.flags,
            "reactions": [
                {
                    "emoji": emoji_payload(key),
                    "count": len(users),
                    "count_details": {"burst": 0, "normal": len(users)},
                    "me": viewer_id in users,
                    "me_burst": False,
                    "burst_colors": [],
                }
                for key, users in self.reactions.items()
                if users
            ],
        }
        if self.guild_id is not None:
            payload["guild_id"] = str(self.guild_id)
        if self.webhook_id is not None:
            payload["webhook_id"] = str(self.webhook_id)
        if self.application_id is not None:
            payload["application_id"] = str(self.application_id)
        if self.message_reference is not None:
            payload["message_reference"] = self.message_reference
        if self.nonce is not None:
            payload["nonce"] = self.nonce
        if self.interaction_metadata is not None:
            payload["interaction_metadata"] = self.interaction_metadata
        return payload


def parse_emoji(raw: str) -> str | None:
    """The key the fake stores a reaction under: the unicode emoji, or ``name:id``.

    Accepts what discord.py puts in reaction routes (``🔄``, ``name:123``, ``<:name:123>``);
    None when it is not an emoji.
    """
    text = raw.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text.strip("<>").removeprefix("a:").removeprefix(":")
    if not text:
        return None
    if ":" in text:
        name, _, emoji_id = text.rpartition(":")
        return f"{name}:{emoji_id}" if name and emoji_id.isdigit() else None
    return text


def emoji_payload(key: str) -> dict[str, Any]:
    if ":" in key:
        name, _, emoji_id = key.rpartition(":")
        return {"id": emoji_id, "name": name, "animated": False}
    return {"id": None, "name": key}


def _str_or_none(value: int | None) -> str | None:
    return None if value is None else str(value)
