"""The `type: whatsapp` section of config.yaml: one WhatsApp number behind Twilio or Meta.

One model serves both providers so ops write one `type:`; the validator then insists on the
fields of the chosen provider and refuses the other provider's, naming each field, because a
Twilio channel with a stray `app_secret` is almost always a copy-paste mistake that would
otherwise fail only when the first webhook arrives.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Literal, Self

from pydantic import (
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from gateway.channels import ChannelConfig
from gateway.durations import Duration, PositiveDuration
from plugins.whatsapp.twilio_parse import strip_channel

_WRITTEN_PHONE = re.compile(r"\+?[0-9][0-9 ()\-.]*[0-9]")
"""A phone number as people write it: `+55 (11) 99999-0000`."""

DEFAULT_API_BASE = {
    "twilio": "https://api.twilio.com",
    "cloud_api": "https://graph.facebook.com",
}
# Graph API version used by nyaruka/courier's current tests (PROTOCOLS.md 2.9); Meta keeps a
# version for about two years, so ops pin a newer one here when Meta retires this.
DEFAULT_GRAPH_VERSION = "v25.0"

TWILIO_FIELDS = ("account_sid", "auth_token")
TWILIO_SENDER_FIELDS = ("from_", "messaging_service_sid")
CLOUD_FIELDS = ("phone_number_id", "access_token", "app_secret", "verify_token")
CLOUD_OPTIONAL_FIELDS = ("graph_version",)
SECRET_FIELDS = frozenset({"auth_token", "access_token", "app_secret", "verify_token"})

_GRAPH_VERSION = re.compile(r"^v\d+\.\d+$")
_E164 = re.compile(r"^\+\d{6,15}$")
_TWILIO_SID = {
    "account_sid": re.compile(r"AC[0-9a-fA-F]{32}"),
    "messaging_service_sid": re.compile(r"MG[0-9a-fA-F]{32}"),
}
"""Twilio's SIDs are two letters for the kind and 32 hex digits: a pasted auth token or a
cut-off SID would otherwise load, and every send would fail at Twilio with 20003 or 21701."""


def _key(field: str) -> str:
    """Return the YAML key ops write for a model field (`from_` is written `from`)."""
    return "from" if field == "from_" else field


class WhatsAppConfig(ChannelConfig):
    """One WhatsApp channel instance; see DESIGN.md section 3 for the YAML shape."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True
    )

    type: Literal["whatsapp"] = "whatsapp"
    provider: Literal["twilio", "cloud_api"]
    reply_window: Duration | None = timedelta(hours=24)

    # Twilio
    account_sid: str | None = None
    auth_token: SecretStr | None = None
    from_: str | None = Field(default=None, alias="from")
    messaging_service_sid: str | None = None

    # Meta Cloud API
    phone_number_id: str | None = None
    access_token: SecretStr | None = None
    app_secret: SecretStr | None = None
    verify_token: SecretStr | None = None
    graph_version: str = DEFAULT_GRAPH_VERSION

    # Both: where the provider's REST API lives (tests point it at a stand-in server).
    api_base_url: str | None = None
    request_timeout: PositiveDuration = timedelta(seconds=15)
    max_webhook_bytes: int = Field(default=1024 * 1024, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _default_base_url(cls, data: Any) -> Any:
        """Fill in the real API base of the chosen provider when ops did not set one."""
        if isinstance(data, dict) and data.get("api_base_url") is None:
            provider = data.get("provider")
            if isinstance(provider, str) and provider in DEFAULT_API_BASE:
                return {**data, "api_base_url": DEFAULT_API_BASE[provider]}
        return data

    @field_validator("api_base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("expected an http(s) URL such as https://api.twilio.com")
        return value.rstrip("/")

    @field_validator("graph_version")
    @classmethod
    def _check_graph_version(cls, value: str) -> str:
        if not _GRAPH_VERSION.match(value):
            raise ValueError(f"expected a Graph API version such as {DEFAULT_GRAPH_VERSION}")
        return value

    @field_validator("phone_number_id", mode="before")
    @classmethod
    def _number_id_as_text(cls, value: Any) -> Any:
        """An id written unquoted in YAML (`phone_number_id: 1065...`) reads as an integer:
        take it as the digits it is."""
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    def unique_values(self) -> dict[str, str]:
        """One number, one channel. Meta posts a number's traffic to whichever channel has
        it; Twilio posts it to the one webhook URL the number has, so a second Twilio channel
        sending `from` the same number would never hear its customers' answers."""
        if self.provider == "cloud_api" and self.phone_number_id:
            return {"phone_number_id": self.phone_number_id}
        if self.provider == "twilio" and self.from_:
            return {"from": self.from_}
        return {}

    def contact_address(self, written: str) -> str:
        """Twilio's `whatsapp:+5511...` and Meta's `wa_id` (`5511...`, no `+`) are both stored
        as `+5511...`, as is a number written with spaces, dashes or brackets; a BSUID
        (`US.1234`) as it is."""
        address = strip_channel(written)
        if _WRITTEN_PHONE.fullmatch(address):
            return "+" + "".join(c for c in address if c.isdigit())
        return address

    @field_validator("from_")
    @classmethod
    def _whatsapp_sender(cls, value: str | None) -> str | None:
        """Accept `+1415...` as shorthand for Twilio's channel address `whatsapp:+1415...`;
        anything else that is not such an address (a number without `+`, an `sms:` sender)
        would have every send refused by Twilio."""
        if value is None:
            return None
        if _E164.match(value):
            return f"whatsapp:{value}"
        if not value.startswith("whatsapp:") or not _E164.match(value.removeprefix("whatsapp:")):
            raise ValueError("expected a WhatsApp sender such as whatsapp:+14155238886")
        return value

    @field_validator("account_sid", "messaging_service_sid")
    @classmethod
    def _twilio_sid(cls, value: str | None, info: ValidationInfo) -> str | None:
        pattern = _TWILIO_SID[str(info.field_name)]
        if value is not None and value.strip() and not pattern.fullmatch(value.strip()):
            prefix = pattern.pattern[:2]
            raise ValueError(f"expected a Twilio SID: {prefix} and 32 hex digits ({prefix}0a1b...)")
        return value.strip() if value is not None else None

    @model_validator(mode="after")
    def _provider_fields(self) -> Self:
        """Require the chosen provider's fields and refuse the other provider's."""
        errors: list[InitErrorDetails] = []
        given = self.model_fields_set
        if self.provider == "twilio":
            required: tuple[str, ...] = TWILIO_FIELDS
            foreign: tuple[str, ...] = CLOUD_FIELDS + CLOUD_OPTIONAL_FIELDS
            if not any(getattr(self, f) for f in TWILIO_SENDER_FIELDS):
                errors.append(_error("missing_sender", "from", None, self.provider))
        else:
            required = CLOUD_FIELDS
            foreign = TWILIO_FIELDS + TWILIO_SENDER_FIELDS
        for name in required:
            value = getattr(self, name)
            if value is None or _blank(value):
                errors.append(_error("missing_for_provider", _key(name), None, self.provider))
        for name in foreign:
            if name in given:
                shown = "***" if name in SECRET_FIELDS else getattr(self, name)
                errors.append(_error("foreign_field", _key(name), shown, self.provider))
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self

    def secret(self, name: str) -> str:
        """Return a secret's value for signing/auth; never log or format what this returns."""
        value = getattr(self, name)
        if not isinstance(value, SecretStr):
            raise KeyError(name)
        return value.get_secret_value()

    @property
    def base_url(self) -> str:
        """The provider's API base URL (the configured one, else the real one)."""
        return self.api_base_url or DEFAULT_API_BASE[self.provider]


_MESSAGES = {
    "missing_for_provider": "`{field}` is required when provider is {provider}",
    "missing_sender": "provider twilio needs `from` (e.g. whatsapp:+14155238886) "
    "or `messaging_service_sid`",
    "foreign_field": "`{field}` is not a setting of provider {provider}; remove it",
}


def _blank(value: object) -> bool:
    if isinstance(value, SecretStr):
        return not value.get_secret_value().strip()
    return isinstance(value, str) and not value.strip()


def _error(kind: str, field: str, shown: object, provider: str) -> InitErrorDetails:
    message = _MESSAGES[kind]
    return InitErrorDetails(
        type=PydanticCustomError(kind, message, {"field": field, "provider": provider}),
        loc=(field,),
        input=shown,
    )
