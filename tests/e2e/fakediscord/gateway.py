"""The gateway (v10, JSON, optional zlib-stream): HELLO, IDENTIFY/READY, RESUME, dispatch."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from .constants import API_VERSION, PRIVILEGED_INTENTS, ApplicationFlag, CloseCode, Intent, Op
from .models import Guild
from .state import ServerState
from .util import iso8601

_log = logging.getLogger(__name__)

RESUME_BUFFER = 2000  # dispatches kept per session for replay on RESUME
SESSION_START_TOTAL = 1000  # IDENTIFYs Discord allows a bot per day (session_start_limit)
GUILDS_PER_RECOMMENDED_SHARD = 1000  # Discord recommends about one shard per 1,000 guilds
ZLIB_SUFFIX = b"\x00\x00\xff\xff"


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str


@dataclass
class ConnectionInfo:
    """What one websocket connection did; ``Gateway.connections_log`` keeps them all."""

    path: str
    query: dict[str, str]
    compressed: bool
    identified: bool = False
    resumed: bool = False
    shard: tuple[int, int] | None = None  # (shard_id, count) from IDENTIFY, or the resumed one
    heartbeats: int = 0
    close_code: int | None = None
    closed_by_server: bool = False
    open: bool = True


class GatewayConnection:
    """One websocket. Everything it sends goes through one queue and one writer task, so
    frames keep their order whether they come from the socket's handler or a dispatch."""

    def __init__(self, ws: web.WebSocketResponse, info: ConnectionInfo) -> None:
        self.ws = ws
        self.info = info
        self.session: GatewaySession | None = None
        self._outbox: asyncio.Queue[dict[str, Any] | _Close] = asyncio.Queue()
        self._zlib = zlib.compressobj() if info.compressed else None

    def send(self, payload: dict[str, Any]) -> None:
        self._outbox.put_nowait(payload)

    def close(self, code: int, reason: str = "") -> None:
        """Close after the frames already queued have gone out."""
        self._outbox.put_nowait(_Close(code, reason))

    async def run_writer(self) -> None:
        try:
            while True:
                item = await self._outbox.get()
                if isinstance(item, _Close):
                    self.info.closed_by_server = True
                    self.info.close_code = item.code
                    await self.ws.close(code=item.code, message=item.reason.encode())
                    return
                text = json.dumps(item)
                if self._zlib is None:
                    await self.ws.send_str(text)
                else:
                    data = self._zlib.compress(text.encode()) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
                    await self.ws.send_bytes(data)
        except ConnectionError as exc:  # the client went away mid-send
            _log.debug("gateway send failed: %r", exc)


@dataclass(eq=False)
class GatewaySession:
    """An identified session; it outlives its connection so that the client can RESUME."""

    id: str
    user_id: int
    intents: int
    shard: tuple[int, int] | None
    connection: GatewayConnection | None = None
    seq: int = 0
    buffer: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RESUME_BUFFER))
    resumes: int = 0
    presence: dict[str, Any] | None = None

    def covers(self, guild_id: int | None) -> bool:
        """Whether this session's shard gets the events of ``guild_id`` (DMs go to shard 0)."""
        if self.shard is None:
            return True
        shard_id, count = self.shard
        if guild_id is None:
            return shard_id == 0
        return (guild_id >> 22) % count == shard_id

    def dispatch(self, event: str, data: dict[str, Any]) -> None:
        self.seq += 1
        frame = {"op": Op.DISPATCH, "t": event, "s": self.seq, "d": data}
        self.buffer.append(frame)
        if self.connection is not None:
            self.connection.send(frame)


class Gateway:
    """Serves websocket connections and fans state changes out to identified sessions."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.sessions: dict[str, GatewaySession] = {}
        self.connections_log: list[ConnectionInfo] = []
        self._connections: set[GatewayConnection] = set()
        self.default_url = ""
        self.resume_url = ""
        self.identifies = 0  # IDENTIFYs accepted: they use up the session start limit

    # --- what tests look at -----------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """A websocket is open (identified or not)."""
        return bool(self._connections)

    @property
    def identified(self) -> bool:
        """A session is live on an open websocket (after READY or RESUMED)."""
        return any(s.connection is not None for s in self.sessions.values())

    def live_sessions(self) -> list[GatewaySession]:
        """Sessions on an open websocket, in the order they identified."""
        return [s for s in self.sessions.values() if s.connection is not None]

    def serves(self, guild_id: int | None) -> bool:
        """A live session gets ``guild_id``'s events (for sharded bots: its shard is up)."""
        return any(s.covers(guild_id) for s in self.live_sessions())

    def recommended_shards(self) -> int:
        """GET /gateway/bot's ``shards``: the setting, else one per 1,000 guilds."""
        recommended = self.state.settings.recommended_shards
        if recommended is not None:
            return recommended
        return max(1, -(-len(self.state.guilds) // GUILDS_PER_RECOMMENDED_SHARD))

    def session_start_limit(self) -> dict[str, int]:
        return {
            "total": SESSION_START_TOTAL,
            "remaining": max(0, SESSION_START_TOTAL - self.identifies),
            "reset_after": 14_400_000,
            "max_concurrency": 1,
        }

    async def wait_until_identified(self, timeout: float = 5.0) -> GatewaySession:  # noqa: ASYNC109
        def live() -> GatewaySession | None:
            return next((s for s in self.sessions.values() if s.connection is not None), None)

        return await self.state.changes.wait_for(live, timeout, lambda: f"{self.connections_log}")

    def disconnect(self, code: int = CloseCode.UNKNOWN_ERROR, reason: str = "") -> int:
        """Close every websocket from the server side; sessions stay resumable.

        4000 (the default) makes discord.py reconnect and RESUME; 1000 too. Codes such as 4004
        make it give up. Returns the number of connections closed.
        """
        for connection in self._connections:
            connection.close(code, reason)
        return len(self._connections)

    def request_reconnect(self) -> None:
        """Send op 7 RECONNECT: the client closes and resumes on ``resume_gateway_url``."""
        for connection in self._connections:
            connection.send({"op": Op.RECONNECT, "d": None})

    def invalidate_sessions(self, *, resumable: bool = False) -> None:
        """Send op 9 INVALID_SESSION to every connection; forget the sessions unless resumable."""
        for connection in self._connections:
            if connection.session is not None:
                connection.send({"op": Op.INVALID_SESSION, "d": resumable})
        if not resumable:
            self.sessions.clear()

    # --- fan-out (EventSink) ----------------------------------------------------------------

    def dispatch(
        self, event: str, data: dict[str, Any], *, guild_id: int | None, intent: int | None
    ) -> None:
        for session in list(self.sessions.values()):
            if not session.covers(guild_id) or not self._wants(session, intent):
                continue
            session.dispatch(event, self._as_seen_by(session, event, data))

    def dispatch_guild_create(self, guild: Guild) -> None:
        for session in list(self.sessions.values()):
            if session.covers(guild.id) and self._wants(session, Intent.GUILDS):
                session.dispatch("GUILD_CREATE", self.guild_create_payload(guild, session))

    def _wants(self, session: GatewaySession, intent: int | None) -> bool:
        settings = self.state.settings
        return intent is None or not settings.enforce_intents or bool(session.intents & intent)

    def _as_seen_by(
        self, session: GatewaySession, event: str, data: dict[str, Any]
    ) -> dict[str, Any]:
        """Without MESSAGE_CONTENT a bot sees no content in others' guild messages."""
        if event not in ("MESSAGE_CREATE", "MESSAGE_UPDATE") or "guild_id" not in data:
            return data
        if not self.state.settings.enforce_intents or session.intents & Intent.MESSAGE_CONTENT:
            return data
        me = str(session.user_id)
        if data["author"]["id"] == me or any(u["id"] == me for u in data.get("mentions", [])):
            return data
        return {**data, "content": "", "embeds": [], "attachments": [], "components": []}

    def guild_create_payload(self, guild: Guild, session: GatewaySession) -> dict[str, Any]:
        members = list(guild.members.values())
        if self.state.settings.enforce_intents and not session.intents & Intent.GUILD_MEMBERS:
            members = [m for m in members if m.id == session.user_id]  # only yourself
        bot_member = guild.members.get(session.user_id)
        return {
            **guild.to_payload(),
            "joined_at": None if bot_member is None else iso8601(bot_member.joined_at),
            "large": False,
            "unavailable": False,
            "member_count": len(guild.members),
            "members": [m.to_payload() for m in members],
            "channels": [c.to_payload() for c in guild.channels.values()],
            "threads": [],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "embedded_activities": [],
            "lazy": True,
        }

    # --- the websocket ----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        query = dict(request.query)
        compressed = query.get("compress") == "zlib-stream" and self.state.settings.compress
        info = ConnectionInfo(path=request.path, query=query, compressed=compressed)
        self.connections_log.append(info)
        connection = GatewayConnection(ws, info)
        self._connections.add(connection)
        writer = asyncio.create_task(
            connection.run_writer(), name=f"fakediscord-gateway-writer-{id(ws)}"
        )
        self.state.changes.notify()
        try:
            if query.get("v", str(API_VERSION)) != str(API_VERSION):
                connection.close(CloseCode.INVALID_API_VERSION, "Invalid API version")
            elif query.get("encoding", "json") != "json":
                connection.close(CloseCode.DECODE_ERROR, "Only JSON encoding is served here")
            else:
                heartbeat = self.state.settings.heartbeat_interval_ms
                connection.send(
                    {
                        "op": Op.HELLO,
                        "d": {"heartbeat_interval": heartbeat, "_trace": ["fakediscord"]},
                    }
                )
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    self._on_text(connection, message.data)
                elif message.type is WSMsgType.BINARY:
                    connection.close(CloseCode.DECODE_ERROR, "Binary frames are not accepted")
                elif message.type is WSMsgType.ERROR:
                    _log.warning("gateway websocket error: %s", ws.exception())
                    break
        finally:
            writer.cancel()
            (outcome,) = await asyncio.gather(writer, return_exceptions=True)
            if isinstance(outcome, Exception):
                _log.error("gateway writer failed", exc_info=outcome)
            self._forget(connection)
        return ws

    def _forget(self, connection: GatewayConnection) -> None:
        info = connection.info
        info.open = False
        if not info.closed_by_server:
            info.close_code = connection.ws.close_code
        self._connections.discard(connection)
        session = connection.session
        if session is not None and session.connection is connection:
            session.connection = None
            # A client that closes with 1000/1001 ends its session; anything else may resume.
            if not info.closed_by_server and info.close_code in (1000, 1001):
                self.sessions.pop(session.id, None)
        self.state.changes.notify()

    def _on_text(self, connection: GatewayConnection, text: str) -> None:
        try:
            message = json.loads(text)
            op = message["op"]
            data = message.get("d")
        except (ValueError, KeyError, TypeError):
            connection.close(CloseCode.DECODE_ERROR, "Error while decoding payload.")
            return
        if op == Op.HEARTBEAT:
            connection.info.heartbeats += 1
            if self.state.settings.ack_heartbeats:
                connection.send({"op": Op.HEARTBEAT_ACK})
        elif op in (Op.IDENTIFY, Op.RESUME) and connection.session is not None:
            connection.close(CloseCode.ALREADY_AUTHENTICATED, "Already authenticated.")
        elif op == Op.IDENTIFY:
            self._identify(connection, data or {})
        elif op == Op.RESUME:
            self._resume(connection, data or {})
        elif connection.session is None:
            connection.close(CloseCode.NOT_AUTHENTICATED, "Not authenticated.")
        elif op == Op.REQUEST_GUILD_MEMBERS:
            self._send_member_chunk(connection.session, data or {})
        elif op == Op.PRESENCE_UPDATE:
            connection.session.presence = data
        elif op == Op.VOICE_STATE_UPDATE:
            pass
        else:
            connection.close(CloseCode.UNKNOWN_OPCODE, "Unknown opcode.")
        self.state.changes.notify()

    def _identify(self, connection: GatewayConnection, data: dict[str, Any]) -> None:
        settings = self.state.settings
        if data.get("token") != settings.token:
            connection.close(CloseCode.AUTHENTICATION_FAILED, "Authentication failed.")
            return
        intents = data.get("intents")
        if not isinstance(intents, int) or intents < 0:
            connection.close(CloseCode.INVALID_INTENTS, "Invalid intent(s).")
            return
        if intents & PRIVILEGED_INTENTS & ~settings.allowed_privileged_intents:
            connection.close(CloseCode.DISALLOWED_INTENTS, "Disallowed intent(s).")
            return
        shard = data.get("shard")
        if shard is not None and not (
            isinstance(shard, list)
            and len(shard) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) for n in shard)
            and 0 <= shard[0] < shard[1]
        ):
            connection.close(CloseCode.INVALID_SHARD, "Invalid shard.")
            return
        session = GatewaySession(
            id=secrets.token_hex(16),
            user_id=self.state.bot_user.id,
            intents=intents,
            shard=None if shard is None else (shard[0], shard[1]),
            connection=connection,
            presence=data.get("presence"),
        )
        guilds = sum(1 for guild_id in self.state.guilds if session.covers(guild_id))
        if guilds > settings.max_guilds_per_session:
            connection.close(CloseCode.SHARDING_REQUIRED, "Sharding required.")
            return
        self.identifies += 1
        self.sessions[session.id] = session
        connection.session = session
        connection.info.identified = True
        connection.info.shard = session.shard
        session.dispatch("READY", self._ready_payload(session))
        for guild in self.state.guilds.values():
            if session.covers(guild.id) and self._wants(session, Intent.GUILDS):
                session.dispatch("GUILD_CREATE", self.guild_create_payload(guild, session))

    def _ready_payload(self, session: GatewaySession) -> dict[str, Any]:
        state = self.state
        user = {
            **state.bot_user.to_payload(),
            "verified": True,
            "mfa_enabled": False,
            "email": None,
        }
        payload: dict[str, Any] = {
            "v": API_VERSION,
            "user": user,
            "user_settings": {},
            "guilds": [
                {"id": str(guild_id), "unavailable": True}
                for guild_id in state.guilds
                if session.covers(guild_id)
            ],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.resume_url,
            "application": {"id": str(state.application_id), "flags": application_flags(state)},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["local"],
            "_trace": ["fakediscord"],
        }
        if session.shard is not None:
            payload["shard"] = list(session.shard)
        return payload

    def _resume(self, connection: GatewayConnection, data: dict[str, Any]) -> None:
        if data.get("token") != self.state.settings.token:
            connection.close(CloseCode.AUTHENTICATION_FAILED, "Authentication failed.")
            return
        session = self.sessions.get(str(data.get("session_id")))
        seq = data.get("seq")
        if session is None or not isinstance(seq, int) or seq > session.seq:
            connection.send({"op": Op.INVALID_SESSION, "d": False})
            return
        missed = [frame for frame in session.buffer if frame["s"] > seq]
        if missed and missed[0]["s"] != seq + 1:
            connection.send({"op": Op.INVALID_SESSION, "d": False})  # replay buffer overran
            return
        if session.connection is not None:
            session.connection.close(CloseCode.UNKNOWN_ERROR, "Session resumed elsewhere")
        session.connection = connection
        session.resumes += 1
        connection.session = session
        connection.info.resumed = True
        connection.info.shard = session.shard
        for frame in missed:
            connection.send(frame)
        session.dispatch("RESUMED", {"_trace": ["fakediscord"]})

    def _send_member_chunk(self, session: GatewaySession, data: dict[str, Any]) -> None:
        guild = self.state.guilds.get(int(data.get("guild_id") or 0))
        if guild is None:
            return
        members = list(guild.members.values())
        user_ids = data.get("user_ids")
        if user_ids:
            wanted = {int(u) for u in (user_ids if isinstance(user_ids, list) else [user_ids])}
            members = [m for m in members if m.id in wanted]
        elif query := data.get("query"):
            members = [m for m in members if m.user.username.lower().startswith(str(query).lower())]
        limit = data.get("limit") or 0
        if limit:
            members = members[:limit]
        chunk: dict[str, Any] = {
            "guild_id": str(guild.id),
            "members": [m.to_payload() for m in members],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
        }
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        session.dispatch("GUILD_MEMBERS_CHUNK", chunk)


def application_flags(state: ServerState) -> int:
    allowed = state.settings.allowed_privileged_intents
    flags = ApplicationFlag.APPLICATION_COMMAND_BADGE
    if allowed & Intent.GUILD_MEMBERS:
        flags |= ApplicationFlag.GATEWAY_GUILD_MEMBERS_LIMITED
    if allowed & Intent.MESSAGE_CONTENT:
        flags |= ApplicationFlag.GATEWAY_MESSAGE_CONTENT_LIMITED
    if allowed & Intent.GUILD_PRESENCES:
        flags |= ApplicationFlag.GATEWAY_PRESENCE_LIMITED
    return int(flags)
