"""Interaction callbacks and the interaction webhook (original response, follow-ups).

These routes carry no Authorization header: the interaction token in the path is the
credential. It is good for 15 minutes; the initial callback must come within 3 seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from .commands import validate_choices
from .constants import CallbackType, ErrorCode, InteractionType, MessageFlag, MessageType
from .errors import (
    DiscordHTTPError,
    field_error,
    invalid_webhook_token,
    unknown_interaction,
    unknown_message,
    unknown_webhook,
)
from .interactions import InteractionHandle
from .models import MessageRecord
from .multipart import MessageBody, read_message_body
from .rest import RouteSpec
from .state import ServerState
from .util import json_response, no_content, snowflake_or_none

_ALLOWED_CALLBACKS: dict[InteractionType, frozenset[int]] = {
    InteractionType.APPLICATION_COMMAND: frozenset({4, 5, 9}),
    InteractionType.MESSAGE_COMPONENT: frozenset({4, 5, 6, 7, 9}),
    InteractionType.APPLICATION_COMMAND_AUTOCOMPLETE: frozenset({8}),
    InteractionType.MODAL_SUBMIT: frozenset({4, 5, 6, 7}),
}


@contextmanager
def _recording_rejections(interaction: InteractionHandle) -> Iterator[None]:
    """Keep every error answered on this interaction's routes in ``interaction.rejected``."""
    try:
        yield
    except DiscordHTTPError as error:
        interaction.rejected.append((error.status, error.code))
        interaction.changes.notify()
        raise


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true")


class InteractionRoutes:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    def routes(self) -> list[RouteSpec]:
        hook = "/webhooks/{app_id}/{token}"
        return [
            ("POST", "/interactions/{interaction_id}/{token}/callback", self.callback),
            ("POST", hook, self.create_followup),
            ("GET", hook + "/messages/{message_id}", self.get_message),
            ("PATCH", hook + "/messages/{message_id}", self.edit_message),
            ("DELETE", hook + "/messages/{message_id}", self.delete_message),
        ]

    # --- the initial response ---------------------------------------------------------------

    async def callback(self, request: web.Request) -> web.Response:
        interaction = self.state.interactions.get(
            snowflake_or_none(request.match_info["interaction_id"]) or 0
        )
        if interaction is None or interaction.token != request.match_info["token"]:
            raise unknown_interaction()
        if interaction.callback_attempted_at is None:
            interaction.callback_attempted_at = self.state.clock.monotonic()
        with _recording_rejections(interaction):
            resource = self._respond(interaction, await read_message_body(request))
        self.state.changes.notify()
        if not _truthy(request.query.get("with_response")):
            return no_content()
        original = interaction.original
        summary: dict[str, Any] = {"id": str(interaction.id), "type": int(interaction.type)}
        if original is not None and interaction.callback_type in (4, 5):
            summary["response_message_id"] = str(original.id)
            summary["response_message_loading"] = original.loading
            summary["response_message_ephemeral"] = original.ephemeral
        return json_response({"interaction": summary, "resource": resource})

    def _respond(self, interaction: InteractionHandle, body: MessageBody) -> dict[str, Any]:
        """Apply one callback; return the ``resource`` part of the answer."""
        callback_type = body.payload.get("type")
        data = body.payload.get("data") or {}
        if interaction.responded:
            raise DiscordHTTPError(
                400,
                ErrorCode.INTERACTION_ALREADY_ACKNOWLEDGED,
                "Interaction has already been acknowledged.",
            )
        if interaction.ack_window_closed:
            raise unknown_interaction()
        if callback_type not in _ALLOWED_CALLBACKS[interaction.type]:
            raise field_error(
                "type",
                f"Invalid callback type {callback_type} for this interaction",
                "INTERACTION_CALLBACK_TYPE_INVALID",
            )

        resource: dict[str, Any] = {"type": callback_type}
        if callback_type == CallbackType.CHANNEL_MESSAGE_WITH_SOURCE:
            flags = int(data.get("flags") or 0) & MessageFlag.EPHEMERAL
            interaction.original = self._create(
                interaction, MessageBody(data, body.files), flags, original=True
            )
            resource["message"] = self._payload(interaction.original)
        elif callback_type == CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE:
            flags = (int(data.get("flags") or 0) & MessageFlag.EPHEMERAL) | MessageFlag.LOADING
            interaction.original = self._create(
                interaction, MessageBody({}), flags, original=True, loading=True
            )
        elif callback_type in (CallbackType.DEFERRED_UPDATE_MESSAGE, CallbackType.UPDATE_MESSAGE):
            source = interaction.source_message
            if source is None:
                raise field_error(
                    "type",
                    "This interaction has no message to update",
                    "INTERACTION_CALLBACK_TYPE_INVALID",
                )
            if callback_type == CallbackType.UPDATE_MESSAGE:
                self.state.edit_message(
                    source,
                    MessageBody(data, body.files),
                    size_limit=interaction.attachment_size_limit,
                )
                resource["message"] = self._payload(source)
            interaction.original = source  # @original now means the component's message
        elif callback_type == CallbackType.APPLICATION_COMMAND_AUTOCOMPLETE_RESULT:
            interaction.choices = validate_choices(data.get("choices"))
        elif callback_type == CallbackType.MODAL:
            if not (data.get("custom_id") and data.get("title") and data.get("components")):
                raise field_error("data", "A modal needs custom_id, title and components")
            interaction.modal = data
        interaction.callback_type = int(callback_type)
        interaction.callback_data = data
        interaction.acknowledged_at = self.state.clock.monotonic()
        return resource

    # --- the webhook ------------------------------------------------------------------------

    def _interaction(self, request: web.Request) -> InteractionHandle:
        if snowflake_or_none(request.match_info["app_id"]) != self.state.application_id:
            raise unknown_webhook()
        interaction = self.state.interaction_by_token(request.match_info["token"])
        if interaction is None:
            raise unknown_webhook()
        if interaction.token_expired:
            with _recording_rejections(interaction):
                raise invalid_webhook_token()
        return interaction

    def _message(self, interaction: InteractionHandle, raw_id: str) -> MessageRecord:
        if raw_id == "@original":
            message = interaction.original
        else:
            wanted = snowflake_or_none(raw_id)
            candidates = (
                [interaction.original] if interaction.original else []
            ) + interaction.followups
            message = next((m for m in candidates if m.id == wanted), None)
        if message is None or message.deleted:
            raise unknown_message()
        return message

    async def create_followup(self, request: web.Request) -> web.Response:
        interaction = self._interaction(request)
        with _recording_rejections(interaction):
            message = await self._followup(interaction, await read_message_body(request))
        if not _truthy(request.query.get("wait")):
            return no_content()
        return json_response(self._payload(message))

    async def _followup(self, interaction: InteractionHandle, body: MessageBody) -> MessageRecord:
        if not interaction.responded:
            raise unknown_webhook()
        original = interaction.original
        if (
            original is not None
            and original.loading
            and not original.deleted  # deleted: a new message, which may be ephemeral
            and interaction.callback_type == CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
        ):
            # The first follow-up after a deferred response fills in the "thinking" message;
            # its ephemerality was decided by the defer.
            message = self.state.edit_message(
                original, body, size_limit=interaction.attachment_size_limit
            )
        else:
            flags = int(body.payload.get("flags") or 0) & MessageFlag.EPHEMERAL
            message = self._create(interaction, body, flags, original=False)
        interaction.followups.append(message)
        self.state.changes.notify()
        return message

    async def get_message(self, request: web.Request) -> web.Response:
        interaction = self._interaction(request)
        with _recording_rejections(interaction):
            message = self._message(interaction, request.match_info["message_id"])
        return json_response(self._payload(message))

    async def edit_message(self, request: web.Request) -> web.Response:
        interaction = self._interaction(request)
        with _recording_rejections(interaction):
            message = self._message(interaction, request.match_info["message_id"])
            body = await read_message_body(request)
            self.state.edit_message(message, body, size_limit=interaction.attachment_size_limit)
        return json_response(self._payload(message))

    async def delete_message(self, request: web.Request) -> web.Response:
        interaction = self._interaction(request)
        with _recording_rejections(interaction):
            self.state.delete_message(self._message(interaction, request.match_info["message_id"]))
        return no_content()

    # --- helpers ----------------------------------------------------------------------------

    def _create(
        self,
        interaction: InteractionHandle,
        body: MessageBody,
        flags: int,
        *,
        original: bool,
        loading: bool = False,
    ) -> MessageRecord:
        channel = self.state.require_channel(interaction.channel_id)
        is_command = interaction.type == InteractionType.APPLICATION_COMMAND
        message_type = (
            MessageType.CHAT_INPUT_COMMAND if original and is_command else MessageType.DEFAULT
        )
        return self.state.create_message(
            channel,
            self.state.bot_user,
            body,
            size_limit=interaction.attachment_size_limit,
            flags=flags,
            type=message_type,
            interaction=interaction,
            interaction_metadata=self._metadata(interaction, original=original),
            allow_empty=loading,
        )

    def _metadata(self, interaction: InteractionHandle, *, original: bool) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "id": str(interaction.id),
            "type": int(interaction.type),
            "user": interaction.user.to_payload(),
            "authorizing_integration_owners": {"0": str(interaction.guild_id or 0)},
        }
        if interaction.command is not None:
            metadata["name"] = interaction.command.name
            metadata["command_type"] = interaction.command.type
        if interaction.source_message is not None:
            metadata["interacted_message_id"] = str(interaction.source_message.id)
        if not original and interaction.original is not None:
            metadata["original_response_message_id"] = str(interaction.original.id)
        return metadata

    def _payload(self, message: MessageRecord) -> dict[str, Any]:
        return message.to_payload(viewer_id=self.state.bot_user.id)
