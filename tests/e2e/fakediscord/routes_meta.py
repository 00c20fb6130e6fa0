"""REST routes about the bot itself: gateway URLs, users, the application, guilds, files."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .constants import ErrorCode, Permission
from .errors import DiscordHTTPError
from .gateway import Gateway, application_flags
from .models import Guild
from .rest import RouteSpec
from .state import ServerState
from .util import json_response, snowflake_or_none


class MetaRoutes:
    def __init__(self, state: ServerState, gateway: Gateway) -> None:
        self.state = state
        self.gateway = gateway

    def routes(self) -> list[RouteSpec]:
        return [
            ("GET", "/gateway", self.get_gateway),
            ("GET", "/gateway/bot", self.get_gateway_bot),
            ("GET", "/users/@me", self.get_me),
            ("GET", "/users/{user_id}", self.get_user),
            ("GET", "/oauth2/applications/@me", self.get_application),
            ("GET", "/applications/@me", self.get_application),
            ("GET", "/guilds/{guild_id}", self.get_guild),
            ("GET", "/guilds/{guild_id}/channels", self.get_guild_channels),
            ("GET", "/guilds/{guild_id}/roles", self.get_guild_roles),
            ("GET", "/guilds/{guild_id}/members/{user_id}", self.get_member),
        ]

    async def get_gateway(self, request: web.Request) -> web.Response:
        return json_response({"url": self.gateway.default_url})

    async def get_gateway_bot(self, request: web.Request) -> web.Response:
        return json_response(
            {
                "url": self.gateway.default_url,
                "shards": self.gateway.recommended_shards(),
                "session_start_limit": self.gateway.session_start_limit(),
            }
        )

    async def get_me(self, request: web.Request) -> web.Response:
        me = self.state.bot_user.to_payload()
        return json_response(
            {**me, "verified": True, "mfa_enabled": False, "email": None, "locale": "en-US"}
        )

    async def get_user(self, request: web.Request) -> web.Response:
        user = self.state.users.get(snowflake_or_none(request.match_info["user_id"]) or 0)
        if user is None:
            raise DiscordHTTPError(404, ErrorCode.UNKNOWN_USER, "Unknown User")
        return json_response(user.to_payload())

    async def get_application(self, request: web.Request) -> web.Response:
        return json_response(application_payload(self.state))

    async def get_guild(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        counts = {"approximate_member_count": len(guild.members), "approximate_presence_count": 0}
        with_counts = request.query.get("with_counts", "false").lower() in ("true", "1")
        return json_response({**guild.to_payload(), **(counts if with_counts else {})})

    async def get_guild_channels(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        return json_response([c.to_payload() for c in guild.channels.values()])

    async def get_guild_roles(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        return json_response([r.to_payload() for r in guild.roles.values()])

    async def get_member(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        member = guild.members.get(snowflake_or_none(request.match_info["user_id"]) or 0)
        if member is None:
            raise DiscordHTTPError(404, ErrorCode.UNKNOWN_MEMBER, "Unknown Member")
        return json_response(member.to_payload())

    def _guild(self, request: web.Request) -> Guild:
        guild = self.state.guilds.get(snowflake_or_none(request.match_info["guild_id"]) or 0)
        if guild is None:
            raise DiscordHTTPError(404, ErrorCode.UNKNOWN_GUILD, "Unknown Guild")
        if self.state.bot_user.id not in guild.members:
            raise DiscordHTTPError(403, ErrorCode.MISSING_ACCESS, "Missing Access")
        return guild


class AttachmentRoutes:
    """The "CDN": attachment URLs point here, shaped like Discord's
    (``/attachments/{channel_id}/{attachment_id}/{filename}``, ``/ephemeral-attachments/...``
    for ephemeral ones). No token needed; a wrong channel, id, name or prefix is a 404. The
    requests are logged in ``fake.requests`` and fault rules apply to them (``rest.py``)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def install(self, app: web.Application) -> None:
        for prefix in ("attachments", "ephemeral-attachments"):
            app.router.add_get(
                f"/{prefix}/{{channel_id}}/{{attachment_id}}/{{filename}}", self.get_attachment
            )

    async def get_attachment(self, request: web.Request) -> web.Response:
        info = request.match_info
        attachment = self.state.attachments.get(snowflake_or_none(info["attachment_id"]) or 0)
        ephemeral = request.path.startswith("/ephemeral-")
        if (
            attachment is None
            or attachment.filename != info["filename"]
            or attachment.channel_id != snowflake_or_none(info["channel_id"])
            or attachment.ephemeral != ephemeral
        ):
            return web.Response(status=404, text="Not Found")
        headers = {"Content-Type": attachment.content_type or "application/octet-stream"}
        return web.Response(body=attachment.content, headers=headers)


def application_payload(state: ServerState) -> dict[str, Any]:
    return {
        "id": str(state.application_id),
        "name": state.bot_user.username,
        "icon": None,
        "description": "",
        "summary": "",
        "type": None,
        "hook": True,
        "bot_public": True,
        "bot_require_code_grant": False,
        "bot": state.bot_user.to_payload(),
        "owner": state.owner.to_payload(),
        "team": None,
        "verify_key": "0" * 64,
        "flags": application_flags(state),
        "rpc_origins": [],
        "terms_of_service_url": None,
        "privacy_policy_url": None,
        # a URL here would make discord.py warn that no interactions come by the gateway
        "interactions_endpoint_url": None,
        "role_connections_verification_url": None,
        "tags": [],
        "install_params": {
            "scopes": ["bot", "applications.commands"],
            "permissions": str(int(Permission.SEND_MESSAGES)),
        },
        "integration_types_config": {"0": {}},
        "approximate_guild_count": len(state.guilds),
        "redirect_uris": [],
    }
