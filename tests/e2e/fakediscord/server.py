"""``FakeDiscord``: the server (REST + gateway on 127.0.0.1) and the test driver around it."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

from aiohttp import web

from .commands import CommandSync, RegisteredCommand, build_invocation_options
from .constants import (
    DEFAULT_ATTACHMENT_SIZE_LIMIT,
    ComponentType,
    InteractionType,
    Permission,
)
from .faults import BodyPredicate, FaultKind, FaultRule
from .gateway import ConnectionInfo, Gateway, GatewaySession
from .interactions import DEFAULT_WAIT, InteractionHandle
from .invocations import InvocationBuilder
from .models import (
    Channel,
    Guild,
    Member,
    MessageRecord,
    PermissionOverwrite,
    Role,
    Upload,
    User,
    parse_emoji,
)
from .multipart import MessageBody
from .rest import EditRateLimit, RateLimitRule, RequestRecord, RestApi
from .routes_channels import ChannelRoutes
from .routes_commands import CommandRoutes
from .routes_interactions import InteractionRoutes
from .routes_meta import AttachmentRoutes, MetaRoutes
from .state import ServerState, Settings
from .util import Clock

_log = logging.getLogger(__name__)
FORM_FILLING_S = 1.0  # from a modal shown to its submission (see submit_modal)

T = TypeVar("T")
UserLike = User | Member
MessageLike = MessageRecord | int

GATEWAY_PATH = "/gateway"
RESUME_GATEWAY_PATH = "/gateway/resume"  # distinct, so a test can see the client used it


class FakeDiscord:
    """A Discord-compatible server for end-to-end tests, plus methods that play the users.

    The default world: the bot (``bot_user``, also the application), an ``owner``, one
    ``guild`` with a text ``channel``, a ``moderator_role`` (manage messages), a plain
    ``user`` ("alice") and a ``moderator`` ("mod") holding that role.

    Use it as ``async with FakeDiscord() as fake:``, point discord.py at ``rest_base`` and
    ``gateway_url`` (see ``discordpy.pointed_at``), start the bot with ``fake.token``.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        heartbeat_interval_ms: int = 41_250,
        interaction_token_lifetime: float = 15 * 60.0,
        ack_deadline: float = 3.0,
        attachment_size_limit: int = DEFAULT_ATTACHMENT_SIZE_LIMIT,
        compress: bool = True,
        allowed_privileged_intents: int = 0,
        guild_name: str = "Test Guild",
        recommended_shards: int | None = None,
        max_guilds_per_session: int = 2500,
    ) -> None:
        self.clock = Clock()
        self.settings = Settings(
            token=token or f"fake.{secrets.token_urlsafe(24)}",
            heartbeat_interval_ms=heartbeat_interval_ms,
            interaction_token_lifetime=interaction_token_lifetime,
            ack_deadline=ack_deadline,
            attachment_size_limit=attachment_size_limit,
            compress=compress,
            allowed_privileged_intents=allowed_privileged_intents,
            recommended_shards=recommended_shards,
            max_guilds_per_session=max_guilds_per_session,
        )
        self.state = ServerState(self.settings, self.clock)
        self.gateway = Gateway(self.state)
        self.state.events = self.gateway
        self.rest = RestApi(self.state)
        self._invocations = InvocationBuilder(self.state)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

        self.guild = self.state.add_guild(guild_name)
        self.channel = self.add_channel("general")
        self.moderator_role = self.add_role("Moderator", Permission.MANAGE_MESSAGES)
        self.user = self.add_user("alice")
        self.moderator = self.add_user("mod", roles=[self.moderator_role])

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind 127.0.0.1 on a free port and serve."""
        if self._runner is not None:
            raise RuntimeError("already started")
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get(GATEWAY_PATH, self.gateway.handle)
        app.router.add_get(RESUME_GATEWAY_PATH, self.gateway.handle)
        AttachmentRoutes(self.state).install(app)
        self.rest.install(
            app,
            MetaRoutes(self.state, self.gateway).routes()
            + CommandRoutes(self.state).routes()
            + InteractionRoutes(self.state).routes()
            + ChannelRoutes(self.state).routes(),
        )
        self.rest.install_fallback(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        self.state.base_url = self.base_url
        self.gateway.default_url = self.gateway_url
        self.gateway.resume_url = f"ws://127.0.0.1:{self._port}{RESUME_GATEWAY_PATH}"
        _log.info("fake Discord listening on %s", self.base_url)

    async def stop(self) -> None:
        """Close gateway connections (1001, going away) and stop serving. Requests held by
        ``stall_requests`` are dropped at once, so a long stall never holds up the stop."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self.rest.faults.close()
        self.gateway.disconnect(1001, "server stopping")
        try:
            await self.state.changes.wait_for(lambda: not self.gateway.connected, 2.0)
        except TimeoutError:
            _log.warning("gateway connections still open at stop")
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("not started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def rest_base(self) -> str:
        """For ``discord.http.Route.BASE``."""
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """For ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`` (as a ``yarl.URL``)."""
        return f"ws://127.0.0.1:{self.port}{GATEWAY_PATH}"

    @property
    def token(self) -> str:
        return self.settings.token

    @property
    def application_id(self) -> int:
        return self.state.application_id

    @property
    def bot_user(self) -> User:
        return self.state.bot_user

    @property
    def owner(self) -> User:
        return self.state.owner

    @property
    def bot_role(self) -> Role:
        return self.state.bot_role(self.guild)

    # --- building the world -----------------------------------------------------------------

    def add_user(
        self,
        username: str,
        *,
        bot: bool = False,
        guild: Guild | None = None,
        roles: Iterable[Role] = (),
        join: bool = True,
    ) -> User:
        """A new user, by default a member of ``guild`` (the default guild) with ``roles``."""
        user = self.state.add_user(username, bot=bot)
        if join:
            self.state.add_member(guild or self.guild, user, roles)
        return user

    def add_member(
        self, user: User, *, guild: Guild | None = None, roles: Iterable[Role] = ()
    ) -> Member:
        return self.state.add_member(guild or self.guild, user, roles)

    def add_role(self, name: str, permissions: int = 0, *, guild: Guild | None = None) -> Role:
        return self.state.add_role(guild or self.guild, name, int(permissions))

    def add_channel(
        self,
        name: str,
        *,
        guild: Guild | None = None,
        overwrites: Iterable[PermissionOverwrite] = (),
        topic: str | None = None,
    ) -> Channel:
        return self.state.add_channel(guild or self.guild, name, overwrites=overwrites, topic=topic)

    def add_guild(
        self, name: str, *, owner: User | None = None, shard: tuple[int, int] | None = None
    ) -> Guild:
        """Another guild the bot is in; a connected bot gets its GUILD_CREATE (on the shard
        that serves it). ``shard=(shard_id, count)`` picks an id that shard serves."""
        return self.state.add_guild(name, owner=owner, shard=shard)

    def permissions_for(self, user: UserLike, channel: Channel | None = None) -> int:
        channel = channel or self.channel
        guild = self.state.guild_of(channel)
        if guild is None:
            raise ValueError("DM channels have no permissions")
        return self.state.permissions_for(guild, _user(user).id, channel)

    def advance_time(self, seconds: float) -> None:
        """Move the server's clock: expires interaction tokens and ack windows, dates messages."""
        self.clock.advance(seconds)
        self.state.changes.notify()

    # --- playing users: commands, components, modals ----------------------------------------

    def invoke_slash(
        self,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        user: UserLike | None = None,
        channel: Channel | None = None,
        locale: str = "en-US",
        attachment_size_limit: int | None = None,
    ) -> InteractionHandle:
        """Run a registered slash command as ``user`` (default ``self.user``) in ``channel``.

        ``name`` may name a subcommand: ``"admin queue clear"``. Options are checked against
        the registered command (types, choices, required) and sent typed as Discord does.
        An ATTACHMENT option takes ``fake.attachment(...)`` (see there).
        """
        user_obj, channel_obj = _user(user or self.user), channel or self.channel
        command, path = self._find_command(name, channel_obj)
        resolve = self._invocations.resolver(user_obj, channel_obj)
        option_list, resolved = build_invocation_options(command, path, options or {}, resolve)
        data = self._command_data(command, option_list, resolved)
        interaction = self._invocations.create(
            InteractionType.APPLICATION_COMMAND,
            data,
            user=user_obj,
            channel=channel_obj,
            command=command,
            locale=locale,
            attachment_size_limit=attachment_size_limit,
        )
        interaction.attachments = [
            self.state.attachments[int(key)] for key in resolved.get("attachments", {})
        ]
        self._dispatch_interaction(interaction)
        return interaction

    @staticmethod
    def attachment(
        filename: str,
        content: bytes,
        *,
        content_type: str | None = None,
        size: int | None = None,
    ) -> Upload:
        """A file for an ATTACHMENT option of ``invoke_slash``, as a user uploads it:
        ``fake.invoke_slash("imagine", {"image": fake.attachment("in.png", data)})``.

        When invoked it is stored in the invocation's channel (``interaction.attachments``)
        and sent as Discord does: the option's value is its id, ``data.resolved.attachments``
        has id, filename, size, url/proxy_url, content_type (guessed when None), width and
        height (when Pillow decodes it) and ``ephemeral: true``. The URL serves ``content``
        from the fake's CDN route (``GET /ephemeral-attachments/{channel}/{id}/{filename}``,
        subject to ``fail_requests``/``stall_requests``/``drop_requests``). ``size`` reports
        another size than ``len(content)`` (a file declared too big).
        """
        if size is not None and size < 0:
            raise ValueError("size must be >= 0")
        return Upload(filename, bytes(content), content_type, size)

    async def invoke_autocomplete(
        self,
        name: str,
        options: Mapping[str, Any],
        focused: str,
        *,
        user: UserLike | None = None,
        channel: Channel | None = None,
        timeout: float = DEFAULT_WAIT,  # noqa: ASYNC109
    ) -> list[dict[str, Any]]:
        """Type into option ``focused`` (its value in ``options``, as typed so far); return
        the choices the bot answered with."""
        user_obj, channel_obj = _user(user or self.user), channel or self.channel
        command, path = self._find_command(name, channel_obj)
        resolve = self._invocations.resolver(user_obj, channel_obj)
        option_list, resolved = build_invocation_options(
            command, path, options, resolve, focused=focused
        )
        interaction = self._invocations.create(
            InteractionType.APPLICATION_COMMAND_AUTOCOMPLETE,
            self._command_data(command, option_list, resolved),
            user=user_obj,
            channel=channel_obj,
            command=command,
        )
        self._dispatch_interaction(interaction)
        return await interaction.wait_for_choices(timeout)

    def click_button(
        self, message: MessageLike, custom_id: str, *, user: UserLike | None = None
    ) -> InteractionHandle:
        """Click the button ``custom_id`` on ``message`` as ``user``."""
        record = self._message(message)
        component = _find_component(record.components, custom_id)
        if component is None or component.get("type") != ComponentType.BUTTON:
            raise LookupError(
                f"message {record.id} has no button {custom_id!r}: {record.components}"
            )
        if component.get("disabled"):
            raise ValueError(f"button {custom_id!r} is disabled")
        return self._component_interaction(
            record, {"custom_id": custom_id, "component_type": ComponentType.BUTTON}, user
        )

    def choose(
        self,
        message: MessageLike,
        custom_id: str,
        values: list[str],
        *,
        user: UserLike | None = None,
    ) -> InteractionHandle:
        """Pick ``values`` in the select menu ``custom_id`` on ``message``."""
        record = self._message(message)
        component = _find_component(record.components, custom_id)
        if component is None or component.get("type") not in (3, 5, 6, 7, 8):
            raise LookupError(f"message {record.id} has no select menu {custom_id!r}")
        data = {"custom_id": custom_id, "component_type": component["type"], "values": list(values)}
        return self._component_interaction(record, data, user)

    def submit_modal(
        self,
        shown_by: InteractionHandle,
        values: Mapping[str, str],
        *,
        user: UserLike | None = None,
    ) -> InteractionHandle:
        """Fill in and submit the modal the bot answered ``shown_by`` with."""
        modal = shown_by.modal
        if modal is None:
            raise LookupError(f"interaction {shown_by.id} was not answered with a modal")
        channel = self.state.require_channel(shown_by.channel_id)
        data = {
            "custom_id": modal["custom_id"],
            "components": _modal_submission(modal["components"], values),
        }
        interaction = self._invocations.create(
            InteractionType.MODAL_SUBMIT,
            data,
            user=_user(user) if user is not None else shown_by.user,
            channel=channel,
            source_message=shown_by.source_message,
        )
        # A person needs a moment to fill in a form. Without it, the submission can reach the
        # bot before discord.py has read Discord's answer to its modal (it registers the modal
        # only then) and is dropped: a race no real user can trigger.
        asyncio.get_running_loop().call_later(
            FORM_FILLING_S, self._dispatch_interaction, interaction
        )
        return interaction

    # --- playing users: messages and reactions ----------------------------------------------

    def post_message(
        self, content: str, *, user: UserLike | None = None, channel: Channel | None = None
    ) -> MessageRecord:
        """``user`` writes ``content`` in ``channel`` (MESSAGE_CREATE if the bot's intents ask)."""
        return self.state.create_message(
            channel or self.channel, _user(user or self.user), MessageBody({"content": content})
        )

    def add_reaction(
        self, message: MessageLike, emoji: str, *, user: UserLike | None = None
    ) -> bool:
        """``user`` reacts; dispatches MESSAGE_REACTION_ADD. False if already reacted."""
        record = self._message(message)
        if record.ephemeral:
            raise ValueError("nobody can react to an ephemeral message")
        return self.state.add_reaction(record, _emoji(emoji), _user(user or self.user))

    def remove_reaction(
        self, message: MessageLike, emoji: str, *, user: UserLike | None = None
    ) -> bool:
        record = self._message(message)
        return self.state.remove_reaction(record, _emoji(emoji), _user(user or self.user).id)

    # --- waiting ----------------------------------------------------------------------------

    async def wait_for(
        self,
        predicate: Callable[[FakeDiscord], T | None],
        timeout: float = DEFAULT_WAIT,  # noqa: ASYNC109
    ) -> T:
        """The first truthy ``predicate(fake)``, re-evaluated after every state change."""
        return await self.state.changes.wait_for(lambda: predicate(self), timeout, self._describe)

    async def wait_for_message(
        self,
        predicate: Callable[[MessageRecord], bool],
        timeout: float = DEFAULT_WAIT,  # noqa: ASYNC109
    ) -> MessageRecord:
        """The first message (any channel, deleted ones included) matching ``predicate``."""

        def find() -> MessageRecord | None:
            return next((m for m in self.state.messages.values() if predicate(m)), None)

        return await self.state.changes.wait_for(find, timeout, self._describe)

    async def wait_until_identified(self, timeout: float = DEFAULT_WAIT) -> None:  # noqa: ASYNC109
        await self.gateway.wait_until_identified(timeout)

    def _describe(self) -> str:
        recent = list(self.state.messages.values())[-5:]
        return (
            f"identified={self.identified} messages(last 5)={[m.contents for m in recent]} "
            f"unknown_requests={[(r.method, r.path) for r in self.unknown_requests]}"
        )

    # --- gateway control --------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.gateway.connected

    @property
    def identified(self) -> bool:
        return self.gateway.identified

    @property
    def connections(self) -> list[ConnectionInfo]:
        return self.gateway.connections_log

    @property
    def sessions(self) -> list[GatewaySession]:
        """The live gateway sessions (one per shard for a sharded bot), in identify order;
        ``session.shard`` is ``(shard_id, count)``, or None for an unsharded bot."""
        return self.gateway.live_sessions()

    def disconnect_gateway(self, code: int = 4000, reason: str = "") -> int:
        """Drop the bot's websocket(s) from the server side; the session stays resumable."""
        return self.gateway.disconnect(code, reason)

    def request_reconnect(self) -> None:
        self.gateway.request_reconnect()

    def invalidate_sessions(self, *, resumable: bool = False) -> None:
        self.gateway.invalidate_sessions(resumable=resumable)

    # --- REST behaviour ---------------------------------------------------------------------

    def rate_limit(
        self,
        *,
        method: str | None = None,
        path: str | None = None,
        count: int = 1,
        retry_after: float = 0.05,
        is_global: bool = False,
    ) -> RateLimitRule:
        """Answer the next ``count`` requests matching ``method`` and ``path`` (a regex searched
        in the URL path) with 429 and ``retry_after``; discord.py should wait and retry."""
        rule = RateLimitRule(
            method=method,
            path=re.compile(path) if path is not None else None,
            count=count,
            retry_after=retry_after,
            is_global=is_global,
        )
        self.rest.rate_limit_rules.append(rule)
        return rule

    def fail_requests(
        self,
        method: str | None = None,
        path: str | None = None,
        *,
        status: int = 500,
        count: int | None = 1,
        code: int = 0,
        message: str = "500: Internal Server Error",
        predicate: BodyPredicate | None = None,
        with_files: bool = False,
    ) -> FaultRule:
        """Answer the next ``count`` requests matching ``method`` and ``path`` (a regex searched
        in the URL path; None matches any) with ``status`` and Discord's JSON error body
        ``{"message", "code"}``; the request has no effect. ``count=None``: every one, until
        ``rule.stop()`` or ``clear_faults()``. Fault rules take REST requests and attachment
        downloads from the CDN (paths ``/attachments/...``, ``/ephemeral-attachments/...``).

        ``predicate(body)`` (a ``MessageBody``: JSON payload and uploaded files, see
        ``faults.uploads_matching``) and ``with_files`` (only requests that upload a file)
        narrow the rule to some message bodies. discord.py retries a 500/502/503/504 itself
        (up to 5 tries), so ``count=1`` of those is invisible to the bot; a 4xx is not retried.
        """
        return self._add_fault(
            FaultKind.FAIL,
            method,
            path,
            count,
            predicate,
            with_files,
            status=status,
            code=code,
            message=message,
        )

    def stall_requests(
        self,
        method: str | None = None,
        path: str | None = None,
        *,
        seconds: float,
        count: int | None = 1,
        predicate: BodyPredicate | None = None,
        with_files: bool = False,
    ) -> FaultRule:
        """Hold the next ``count`` matching requests for ``seconds`` before handling them (an
        upload that hangs). A stalled request is in ``faulted`` (status 0) from the moment it
        stalls; ``rule.release()`` ends the stall early. If the client is gone when the stall
        ends (it timed out, or was killed), the request has no effect. ``stop()`` drops every
        stalled request at once. Matching as in ``fail_requests``.
        """
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        return self._add_fault(
            FaultKind.STALL, method, path, count, predicate, with_files, seconds=seconds
        )

    def drop_requests(
        self,
        method: str | None = None,
        path: str | None = None,
        *,
        count: int | None = 1,
        apply: bool = False,
        predicate: BodyPredicate | None = None,
        with_files: bool = False,
    ) -> FaultRule:
        """Read the next ``count`` matching requests, then close the connection without an
        answer (aiohttp raises ``ServerDisconnectedError`` in the client). ``apply=True``
        handles the request first: its effect happens (the message is created) and only the
        answer is lost, the worst case for exactly-once delivery. Recorded with status 0.

        aiohttp retries an idempotent method (GET, PUT, DELETE) once on a fresh connection
        when a reused one is closed under it: drop POST or PATCH requests to be seen.
        Matching as in ``fail_requests``.
        """
        return self._add_fault(
            FaultKind.DROP, method, path, count, predicate, with_files, apply=apply
        )

    def clear_faults(self) -> None:
        """Stop every fault rule; requests stalled now are handled at once."""
        self.rest.faults.clear()

    @property
    def faulted(self) -> list[RequestRecord]:
        """Every request a fault rule took, in order (``record.fault`` says which kind)."""
        return self.rest.faulted

    def _add_fault(
        self,
        kind: FaultKind,
        method: str | None,
        path: str | None,
        count: int | None,
        predicate: BodyPredicate | None,
        with_files: bool,
        **options: Any,
    ) -> FaultRule:
        if count is not None and count < 1:
            raise ValueError("count must be >= 1, or None for every request")
        return self.rest.faults.add(
            FaultRule(
                kind=kind,
                method=method,
                path=re.compile(path) if path is not None else None,
                count=count,
                predicate=predicate,
                with_files=with_files,
                **options,
            )
        )

    def limit_edits(self, limit: int = 5, per: float = 5.0) -> None:
        """Enforce Discord's edit limit (``limit`` message edits per ``per`` s per channel or
        interaction token) with 429s; ``rate_limited`` then shows whether the bot hit it."""
        self.rest.edit_rate_limit = EditRateLimit(limit=limit, per=per)

    @property
    def requests(self) -> list[RequestRecord]:
        return self.rest.requests

    @property
    def unknown_requests(self) -> list[RequestRecord]:
        """Requests for routes the fake does not serve (answered 404): should stay empty."""
        return self.rest.unknown_requests

    @property
    def rate_limited(self) -> list[RequestRecord]:
        return self.rest.rate_limited

    # --- what the bot did -------------------------------------------------------------------

    @property
    def messages(self) -> list[MessageRecord]:
        """Every message, in creation order (deleted and ephemeral ones included)."""
        return list(self.state.messages.values())

    def message(self, message_id: int) -> MessageRecord:
        return self.state.messages[message_id]

    def messages_in(self, channel: Channel | None = None) -> list[MessageRecord]:
        return self.state.messages_in((channel or self.channel).id)

    @property
    def interactions(self) -> list[InteractionHandle]:
        return list(self.state.interactions.values())

    @property
    def command_syncs(self) -> list[CommandSync]:
        return self.state.command_syncs

    def commands(self, guild: Guild | None = None) -> list[RegisteredCommand]:
        """Registered global commands, or ``guild``'s commands."""
        guild_id = None if guild is None else guild.id
        return [c for c in self.state.commands.values() if c.guild_id == guild_id]

    def command(self, name: str, guild: Guild | None = None) -> RegisteredCommand:
        found = next((c for c in self.commands(guild) if c.name == name), None)
        if found is None:
            raise LookupError(
                f"no command {name!r}; registered: {[c.name for c in self.commands(guild)]}"
            )
        return found

    # --- internals --------------------------------------------------------------------------

    def _find_command(self, name: str, channel: Channel) -> tuple[RegisteredCommand, list[str]]:
        top, *path = name.split()
        guild_id = channel.guild_id
        candidates = [c for c in self.state.commands.values() if c.name == top and c.type == 1]
        command = next(
            (c for c in candidates if c.guild_id == guild_id and guild_id is not None), None
        )
        command = command or next((c for c in candidates if c.guild_id is None), None)
        if command is None:
            names = sorted({c.name for c in self.state.commands.values()})
            raise LookupError(f"/{top} is not registered (did the bot sync?); registered: {names}")
        return command, path

    @staticmethod
    def _command_data(
        command: RegisteredCommand, options: list[dict[str, Any]], resolved: dict[str, Any]
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"id": str(command.id), "name": command.name, "type": command.type}
        if options:
            data["options"] = options
        if resolved:
            data["resolved"] = resolved
        if command.guild_id is not None:
            data["guild_id"] = str(command.guild_id)
        return data

    def _component_interaction(
        self, record: MessageRecord, data: dict[str, Any], user: UserLike | None
    ) -> InteractionHandle:
        interaction = self._invocations.create(
            InteractionType.MESSAGE_COMPONENT,
            data,
            user=_user(user or self.user),
            channel=self.state.require_channel(record.channel_id),
            source_message=record,
        )
        self._dispatch_interaction(interaction)
        return interaction

    def _dispatch_interaction(self, interaction: InteractionHandle) -> None:
        if not self.gateway.serves(interaction.guild_id):
            raise RuntimeError(
                "no bot is connected to the gateway to receive the interaction "
                f"(in guild {interaction.guild_id}; live shards: "
                f"{[s.shard for s in self.gateway.live_sessions()]})"
            )
        self.gateway.dispatch(
            "INTERACTION_CREATE", interaction.payload, guild_id=interaction.guild_id, intent=None
        )

    def _message(self, message: MessageLike) -> MessageRecord:
        record = self.state.messages.get(message if isinstance(message, int) else message.id)
        if record is None or record.deleted:
            raise LookupError(f"no message {message!r}")
        return record


def _user(user: UserLike) -> User:
    return user.user if isinstance(user, Member) else user


def _emoji(emoji: str) -> str:
    key = parse_emoji(emoji)
    if key is None:
        raise ValueError(f"not an emoji: {emoji!r}")
    return key


def _find_component(components: list[dict[str, Any]], custom_id: str) -> dict[str, Any] | None:
    for component in components:
        if component.get("custom_id") == custom_id:
            return component
        for key in ("components", "accessory", "component"):
            nested = component.get(key)
            children = (
                nested if isinstance(nested, list) else [nested] if isinstance(nested, dict) else []
            )
            found = _find_component(children, custom_id)
            if found is not None:
                return found
    return None


def _modal_submission(
    components: list[dict[str, Any]], values: Mapping[str, str]
) -> list[dict[str, Any]]:
    """What Discord sends back for a modal: the same rows/labels, text inputs with values."""
    submitted: list[dict[str, Any]] = []
    for component in components:
        kind = component.get("type")
        if kind == ComponentType.ACTION_ROW:
            submitted.append(
                {
                    "type": kind,
                    "components": _modal_submission(component.get("components", []), values),
                }
            )
        elif kind == ComponentType.LABEL:
            inner = _modal_submission([component["component"]], values)[0]
            submitted.append({"type": kind, "id": component.get("id", 0), "component": inner})
        elif kind == ComponentType.TEXT_INPUT:
            custom_id = component["custom_id"]
            if component.get("required", True) and custom_id not in values:
                raise ValueError(f"modal field {custom_id!r} is required")
            submitted.append(
                {"type": kind, "custom_id": custom_id, "value": values.get(custom_id, "")}
            )
        elif "custom_id" in component:  # selects inside labels
            custom_id = component["custom_id"]
            chosen: Any = values.get(custom_id, [])
            submitted.append(
                {
                    "type": kind,
                    "custom_id": custom_id,
                    "values": list(chosen) if not isinstance(chosen, str) else [chosen],
                }
            )
        else:
            submitted.append(
                {"type": kind, **({"id": component["id"]} if "id" in component else {})}
            )
    return submitted
