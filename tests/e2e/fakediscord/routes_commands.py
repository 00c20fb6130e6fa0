"""REST routes for application commands (global and per guild)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .commands import CommandSync, RegisteredCommand, validate_command
from .constants import ErrorCode
from .errors import DiscordHTTPError, invalid_form_body
from .multipart import read_json
from .rest import RouteSpec
from .state import ServerState
from .util import json_response, no_content, snowflake_or_none


class CommandRoutes:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    def routes(self) -> list[RouteSpec]:
        routes: list[RouteSpec] = []
        for prefix in ("/applications/{app_id}", "/applications/{app_id}/guilds/{guild_id}"):
            routes += [
                ("GET", prefix + "/commands", self.list_commands),
                ("PUT", prefix + "/commands", self.bulk_overwrite),
                ("POST", prefix + "/commands", self.upsert),
                ("GET", prefix + "/commands/{command_id}", self.get_command),
                ("PATCH", prefix + "/commands/{command_id}", self.edit_command),
                ("DELETE", prefix + "/commands/{command_id}", self.delete_command),
            ]
        return routes

    def _scope(self, request: web.Request) -> int | None:
        """The guild id of a guild-command route (None for global), after access checks."""
        if snowflake_or_none(request.match_info["app_id"]) != self.state.application_id:
            raise DiscordHTTPError(
                403, 20012, "You are not authorized to perform this action on this application"
            )
        raw_guild = request.match_info.get("guild_id")
        if raw_guild is None:
            return None
        guild = self.state.guilds.get(snowflake_or_none(raw_guild) or 0)
        if guild is None or self.state.bot_user.id not in guild.members:
            raise DiscordHTTPError(403, ErrorCode.MISSING_ACCESS, "Missing Access")
        return guild.id

    def _in_scope(self, guild_id: int | None) -> list[RegisteredCommand]:
        return [c for c in self.state.commands.values() if c.guild_id == guild_id]

    def _command(self, request: web.Request, guild_id: int | None) -> RegisteredCommand:
        command = self.state.commands.get(snowflake_or_none(request.match_info["command_id"]) or 0)
        if command is None or command.guild_id != guild_id:
            raise DiscordHTTPError(
                404, ErrorCode.UNKNOWN_APPLICATION_COMMAND, "Unknown application command"
            )
        return command

    async def list_commands(self, request: web.Request) -> web.Response:
        guild_id = self._scope(request)
        return json_response([c.to_payload() for c in self._in_scope(guild_id)])

    async def get_command(self, request: web.Request) -> web.Response:
        return json_response(self._command(request, self._scope(request)).to_payload())

    async def bulk_overwrite(self, request: web.Request) -> web.Response:
        """PUT: the given list replaces every command in scope; same name+type keeps its id."""
        guild_id = self._scope(request)
        body = await read_json(request)
        if not isinstance(body, list):
            raise invalid_form_body(
                {"_errors": [{"code": "LIST_TYPE_CONVERT", "message": "Must be a list"}]}
            )
        seen: set[tuple[str, int]] = set()
        for index, payload in enumerate(body):
            validate_command(payload, index)
            key = (payload["name"], int(payload.get("type", 1)))
            if key in seen:
                raise invalid_form_body(
                    {
                        "_errors": [
                            {
                                "code": "APPLICATION_COMMANDS_DUPLICATE_NAME",
                                "message": f"Duplicate name {key[0]}",
                            }
                        ]
                    }
                )
            seen.add(key)
        existing = {(c.name, c.type): c for c in self._in_scope(guild_id)}
        for command in existing.values():
            del self.state.commands[command.id]
        result = [
            self._store(
                payload, guild_id, existing.get((payload["name"], int(payload.get("type", 1))))
            )
            for payload in body
        ]
        self.state.command_syncs.append(
            CommandSync(guild_id=guild_id, names=[c.name for c in result])
        )
        self.state.changes.notify()
        return json_response([c.to_payload() for c in result])

    async def upsert(self, request: web.Request) -> web.Response:
        guild_id = self._scope(request)
        payload = await read_json(request)
        validate_command(payload)
        key = (payload["name"], int(payload.get("type", 1)))
        previous = next((c for c in self._in_scope(guild_id) if (c.name, c.type) == key), None)
        command = self._store(payload, guild_id, previous)
        self.state.changes.notify()
        return json_response(command.to_payload(), status=200 if previous else 201)

    async def edit_command(self, request: web.Request) -> web.Response:
        guild_id = self._scope(request)
        command = self._command(request, guild_id)
        changes = await read_json(request) or {}
        merged = {**command.payload, **changes}
        validate_command(merged)
        command = self._store(merged, guild_id, command)
        self.state.changes.notify()
        return json_response(command.to_payload())

    async def delete_command(self, request: web.Request) -> web.Response:
        command = self._command(request, self._scope(request))
        del self.state.commands[command.id]
        self.state.changes.notify()
        return no_content()

    def _store(
        self, payload: dict[str, Any], guild_id: int | None, previous: RegisteredCommand | None
    ) -> RegisteredCommand:
        unchanged = previous is not None and previous.payload == payload
        command = RegisteredCommand(
            id=previous.id if previous is not None else self.state.next_id(),
            application_id=self.state.application_id,
            guild_id=guild_id,
            payload=dict(payload),
            version=previous.version
            if previous is not None and unchanged
            else self.state.next_id(),
        )
        self.state.commands[command.id] = command
        return command
