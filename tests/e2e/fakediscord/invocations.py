"""Building INTERACTION_CREATE payloads the way Discord's client would produce them."""

from __future__ import annotations

from typing import Any

from .commands import RegisteredCommand, Resolver
from .constants import InteractionType, OptionType
from .interactions import InteractionHandle
from .models import Attachment, Channel, Guild, Member, MessageRecord, Role, Upload, User
from .state import ServerState

Resolved = dict[str, dict[str, Any]]


class InvocationBuilder:
    """Creates ``InteractionHandle`` records (registered in the state) with realistic payloads."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def create(
        self,
        type: InteractionType,
        data: dict[str, Any],
        *,
        user: User,
        channel: Channel,
        command: RegisteredCommand | None = None,
        source_message: MessageRecord | None = None,
        locale: str = "en-US",
        attachment_size_limit: int | None = None,
    ) -> InteractionHandle:
        state = self.state
        guild = state.guild_of(channel)
        limit = (
            state.settings.attachment_size_limit
            if attachment_size_limit is None
            else attachment_size_limit
        )
        interaction = InteractionHandle(
            id=state.next_id(),
            token=state.new_interaction_token(),
            type=type,
            application_id=state.application_id,
            user=user,
            guild_id=None if guild is None else guild.id,
            channel_id=channel.id,
            created_at=state.clock.monotonic(),
            token_lifetime=state.settings.interaction_token_lifetime,
            ack_deadline=state.settings.ack_deadline,
            attachment_size_limit=limit,
            clock=state.clock,
            changes=state.changes,
            command=command,
            source_message=source_message,
        )
        interaction.payload = self._payload(interaction, data, guild, channel, locale)
        state.interactions[interaction.id] = interaction
        state.changes.notify()
        return interaction

    def _payload(
        self,
        interaction: InteractionHandle,
        data: dict[str, Any],
        guild: Guild | None,
        channel: Channel,
        locale: str,
    ) -> dict[str, Any]:
        state = self.state
        user = interaction.user
        payload: dict[str, Any] = {
            "id": str(interaction.id),
            "application_id": str(interaction.application_id),
            "type": int(interaction.type),
            "data": data,
            "channel_id": str(channel.id),
            "token": interaction.token,
            "version": 1,
            "locale": locale,
            "entitlements": [],
            "entitlement_sku_ids": [],
            "attachment_size_limit": interaction.attachment_size_limit,
        }
        if guild is not None:
            member = guild.members.get(user.id)
            if member is None:
                raise ValueError(f"{user.username} is not a member of {guild.name}")
            user_permissions = state.permissions_for(guild, user.id, channel)
            payload.update(
                guild_id=str(guild.id),
                guild={"id": str(guild.id), "locale": guild.locale, "features": []},
                guild_locale=guild.locale,
                member={**member.to_payload(), "permissions": str(user_permissions)},
                channel={**channel.to_payload(), "permissions": str(user_permissions)},
                app_permissions=str(state.permissions_for(guild, state.bot_user.id, channel)),
                authorizing_integration_owners={"0": str(guild.id)},
                context=0,  # GUILD
            )
        else:
            payload.update(
                user=user.to_payload(),
                channel=channel.to_payload(),
                app_permissions=str(0),
                authorizing_integration_owners={"0": "0"},
                context=1,  # BOT_DM
            )
        if interaction.source_message is not None:
            payload["message"] = interaction.source_message.to_payload(viewer_id=state.bot_user.id)
        return payload

    # --- option values that point at objects (users, channels, roles, files) ----------------

    def resolver(self, user: User, channel: Channel) -> Resolver:
        """Turns objects given as option values into ids plus ``resolved`` entries."""
        state = self.state
        guild = state.guild_of(channel)

        def resolve(option_type: int, raw: Any) -> tuple[Any, Resolved]:
            if option_type == OptionType.ATTACHMENT:
                attachment = raw if isinstance(raw, Attachment) else self._upload(raw, channel)
                return str(attachment.id), {
                    "attachments": {str(attachment.id): attachment.to_payload()}
                }
            if option_type in (OptionType.ROLE, OptionType.MENTIONABLE) and isinstance(raw, Role):
                return str(raw.id), {"roles": {str(raw.id): raw.to_payload()}}
            if option_type in (OptionType.USER, OptionType.MENTIONABLE):
                target = self._user(raw)
                resolved: Resolved = {"users": {str(target.id): target.to_payload()}}
                member = guild.members.get(target.id) if guild is not None else None
                if guild is not None and member is not None:
                    permissions = state.permissions_for(guild, target.id, channel)
                    resolved["members"] = {
                        str(target.id): {
                            **member.to_payload(with_user=False),
                            "permissions": str(permissions),
                        }
                    }
                return str(target.id), resolved
            if option_type == OptionType.CHANNEL:
                target_channel = raw if isinstance(raw, Channel) else state.channel(int(raw))
                if target_channel is None:
                    raise ValueError(f"no channel {raw!r}")
                entry = {**target_channel.to_payload(), "permissions": "0"}
                if guild is not None:
                    entry["permissions"] = str(
                        state.permissions_for(guild, user.id, target_channel)
                    )
                return str(target_channel.id), {"channels": {str(target_channel.id): entry}}
            if option_type == OptionType.ROLE:
                role = guild.roles.get(int(raw)) if guild is not None else None
                if role is None:
                    raise ValueError(f"no role {raw!r}")
                return str(role.id), {"roles": {str(role.id): role.to_payload()}}
            raise ValueError(f"unsupported option type {option_type} for {raw!r}")

        return resolve

    def _upload(self, raw: Any, channel: Channel) -> Attachment:
        """Store a file the user attaches to the command, in the channel it is invoked in."""
        if isinstance(raw, Upload):
            return self.state.store_attachment(
                channel.id, raw.filename, raw.content, raw.content_type, size=raw.size
            )
        if isinstance(raw, tuple) and len(raw) == 2:
            return self.state.store_attachment(channel.id, str(raw[0]), bytes(raw[1]))
        raise ValueError(
            f"an attachment option takes fake.attachment(...) (an Upload), an Attachment or "
            f"(filename, bytes), not {raw!r}"
        )

    def _user(self, raw: Any) -> User:
        if isinstance(raw, User):
            return raw
        if isinstance(raw, Member):
            return raw.user
        user = self.state.users.get(int(raw))
        if user is None:
            raise ValueError(f"no user {raw!r}")
        return user
