"""REST routes for channels as the bot uses them: messages, reactions, DMs, typing."""

from __future__ import annotations

from aiohttp import web

from .constants import ErrorCode, Permission
from .errors import DiscordHTTPError, field_error, unknown_message
from .models import Channel, MessageRecord, parse_emoji
from .multipart import read_json, read_message_body
from .rest import RouteSpec
from .state import MAX_NONCE_LENGTH, ServerState
from .util import json_response, no_content, snowflake_or_none

_READ = Permission.VIEW_CHANNEL | Permission.READ_MESSAGE_HISTORY


class ChannelRoutes:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    def routes(self) -> list[RouteSpec]:
        message = "/channels/{channel_id}/messages/{message_id}"
        reactions = message + "/reactions"
        return [
            ("GET", "/channels/{channel_id}", self.get_channel),
            ("POST", "/channels/{channel_id}/typing", self.typing),
            ("GET", "/channels/{channel_id}/messages", self.history),
            ("POST", "/channels/{channel_id}/messages", self.create_message),
            ("GET", message, self.get_message),
            ("PATCH", message, self.edit_message),
            ("DELETE", message, self.delete_message),
            ("PUT", reactions + "/{emoji}/@me", self.add_own_reaction),
            ("DELETE", reactions + "/{emoji}/@me", self.remove_own_reaction),
            ("DELETE", reactions + "/{emoji}/{user_id}", self.remove_user_reaction),
            ("GET", reactions + "/{emoji}", self.reaction_users),
            ("DELETE", reactions + "/{emoji}", self.clear_emoji),
            ("DELETE", reactions, self.clear_reactions),
            ("POST", "/users/@me/channels", self.open_dm),
        ]

    # --- helpers ----------------------------------------------------------------------------

    @property
    def _bot_id(self) -> int:
        return self.state.bot_user.id

    def _channel(self, request: web.Request, needed: int = Permission.VIEW_CHANNEL) -> Channel:
        channel = self.state.require_channel(
            snowflake_or_none(request.match_info["channel_id"]) or 0
        )
        guild = self.state.guild_of(channel)
        if guild is not None:
            if (
                not self.state.permissions_for(guild, self._bot_id, channel)
                & Permission.VIEW_CHANNEL
            ):
                raise DiscordHTTPError(403, ErrorCode.MISSING_ACCESS, "Missing Access")
            self.state.require_permissions(channel, self._bot_id, needed)
        return channel

    def _message(self, request: web.Request, channel: Channel) -> MessageRecord:
        message_id = snowflake_or_none(request.match_info["message_id"])
        if message_id is None:
            raise unknown_message()
        return self.state.visible_message(channel.id, message_id)

    def _emoji(self, request: web.Request) -> str:
        emoji = parse_emoji(request.match_info["emoji"])
        if emoji is None:
            raise DiscordHTTPError(400, ErrorCode.UNKNOWN_EMOJI, "Unknown Emoji")
        return emoji

    def _payload(self, message: MessageRecord) -> dict[str, object]:
        return message.to_payload(viewer_id=self._bot_id)

    # --- channels and messages --------------------------------------------------------------

    async def get_channel(self, request: web.Request) -> web.Response:
        return json_response(self._channel(request).to_payload())

    async def typing(self, request: web.Request) -> web.Response:
        self._channel(request, Permission.VIEW_CHANNEL | Permission.SEND_MESSAGES)
        return no_content()

    async def history(self, request: web.Request) -> web.Response:
        """``GET /channels/{id}/messages?limit=&before=|after=|around=``: newest first, as
        Discord answers. ``before``: the newest ``limit`` older than it; ``after``: the oldest
        ``limit`` newer than it; ``around``: ``limit // 2`` older than it, the rest from it on
        (the message itself included). ``limit`` is clamped to 1-100, default 50."""
        channel = self._channel(request, _READ)
        limit = max(1, min(100, int(request.query.get("limit", 50))))
        before = snowflake_or_none(request.query.get("before"))
        after = snowflake_or_none(request.query.get("after"))
        around = snowflake_or_none(request.query.get("around"))
        oldest_first = sorted(
            (m for m in self.state.messages_in(channel.id) if not m.ephemeral), key=lambda m: m.id
        )
        if around is not None:
            older = [m for m in oldest_first if m.id < around]
            newer = [m for m in oldest_first if m.id >= around]
            half = limit // 2
            oldest_first = (older[-half:] if half else []) + newer[: limit - half]
        else:
            if before is not None:
                oldest_first = [m for m in oldest_first if m.id < before]
            if after is not None:
                oldest_first = [m for m in oldest_first if m.id > after][:limit]
            oldest_first = oldest_first[-limit:]
        return json_response([self._payload(m) for m in reversed(oldest_first)])

    async def create_message(self, request: web.Request) -> web.Response:
        """Posting as the bot. A ``nonce`` with ``enforce_nonce: true`` is checked: when the
        bot created a message with the same nonce in the last five minutes (of the server's
        clock), that message is answered and nothing new is created (JSON or multipart)."""
        channel = self._channel(request, Permission.VIEW_CHANNEL | Permission.SEND_MESSAGES)
        body = await read_message_body(request)
        nonce = _nonce(body.payload.get("nonce"))
        if nonce is not None and body.payload.get("enforce_nonce") is True:
            earlier = self.state.message_by_nonce(self._bot_id, nonce)
            if earlier is not None:
                return json_response(self._payload(earlier))
        if body.files:
            self.state.require_permissions(channel, self._bot_id, Permission.ATTACH_FILES)
        message = self.state.create_message(channel, self.state.bot_user, body, nonce=nonce)
        return json_response(self._payload(message))

    async def get_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request, _READ)
        return json_response(self._payload(self._message(request, channel)))

    async def edit_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        message = self._message(request, channel)
        if message.author.id != self._bot_id:
            raise DiscordHTTPError(
                403,
                ErrorCode.CANNOT_EDIT_OTHER_USERS_MESSAGE,
                "Cannot edit a message authored by another user",
            )
        body = await read_message_body(request)
        return json_response(self._payload(self.state.edit_message(message, body)))

    async def delete_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        message = self._message(request, channel)
        if message.author.id != self._bot_id:
            self.state.require_permissions(channel, self._bot_id, Permission.MANAGE_MESSAGES)
        self.state.delete_message(message)
        return no_content()

    # --- reactions --------------------------------------------------------------------------

    async def add_own_reaction(self, request: web.Request) -> web.Response:
        channel = self._channel(request, _READ)
        message = self._message(request, channel)
        emoji = self._emoji(request)
        if not message.reactions.get(emoji):
            self.state.require_permissions(channel, self._bot_id, Permission.ADD_REACTIONS)
        self.state.add_reaction(message, emoji, self.state.bot_user)
        return no_content()

    async def remove_own_reaction(self, request: web.Request) -> web.Response:
        channel = self._channel(request, _READ)
        self.state.remove_reaction(
            self._message(request, channel), self._emoji(request), self._bot_id
        )
        return no_content()

    async def remove_user_reaction(self, request: web.Request) -> web.Response:
        channel = self._channel(request, _READ | Permission.MANAGE_MESSAGES)
        user_id = snowflake_or_none(request.match_info["user_id"])
        if user_id is None:
            raise DiscordHTTPError(404, ErrorCode.UNKNOWN_USER, "Unknown User")
        self.state.remove_reaction(self._message(request, channel), self._emoji(request), user_id)
        return no_content()

    async def reaction_users(self, request: web.Request) -> web.Response:
        channel = self._channel(request, _READ)
        message = self._message(request, channel)
        user_ids = message.reactions.get(self._emoji(request), [])
        limit = max(1, min(100, int(request.query.get("limit", 25))))
        users = [
            self.state.users[u].to_payload()
            for u in sorted(user_ids)[:limit]
            if u in self.state.users
        ]
        return json_response(users)

    async def clear_emoji(self, request: web.Request) -> web.Response:
        channel = self._channel(request, _READ | Permission.MANAGE_MESSAGES)
        self.state.clear_reactions(self._message(request, channel), self._emoji(request))
        return no_content()

    async def clear_reactions(self, request: web.Request) -> web.Response:
        channel = self._channel(request, _READ | Permission.MANAGE_MESSAGES)
        self.state.clear_reactions(self._message(request, channel))
        return no_content()

    # --- DMs --------------------------------------------------------------------------------

    async def open_dm(self, request: web.Request) -> web.Response:
        body = await read_json(request) or {}
        user = self.state.users.get(snowflake_or_none(body.get("recipient_id")) or 0)
        if user is None:
            raise DiscordHTTPError(400, ErrorCode.INVALID_FORM_BODY, "Invalid Form Body")
        return json_response(self.state.dm_channel(user).to_payload())


def _nonce(value: object) -> str | None:
    """A message nonce as Discord takes it: an integer or a string of at most 25 characters."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise field_error("nonce", "Must be an integer or a string.")
    text = str(value)
    if len(text) > MAX_NONCE_LENGTH:
        raise field_error(
            "nonce", f"Must be {MAX_NONCE_LENGTH} or fewer in length.", "BASE_TYPE_MAX_LENGTH"
        )
    return text
