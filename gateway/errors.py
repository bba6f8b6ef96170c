"""Every error the gateway raises on purpose, and what the caller should do about each.

    GatewayError                 base; `code` is the machine-readable name used in API errors
    ├── ConfigError              the config is invalid: fix the file (names file and key path)
    ├── TransitionError          the lifecycle refuses a change: report 4xx, change nothing
    ├── NotFound                 no such conversation/message: report 404
    ├── VersionConflict          someone else changed the conversation first: reload, retry
    ├── InvalidInput             a request or payload is malformed: report 4xx, store nothing
    ├── SignatureError           a webhook is not signed by the provider: report 403
    ├── StoreUnavailable         the store cannot be reached or did not answer in time: 503,
    │                            nothing was acknowledged; the caller (or provider) retries
    └── ChannelError             a provider call failed
        ├── TransientChannelError    retry later (429, 5xx, time-outs)
        └── PermanentChannelError    give up, mark the message failed with the reason

API handlers translate these to `{"error": {"code", "message"}}` with `HTTP_STATUS[code]`.
"""

from __future__ import annotations


class GatewayError(Exception):
    code = "error"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(GatewayError):
    """The configuration is invalid; the message names the file, key path and expectation."""

    code = "invalid_config"


class PluginError(ConfigError):
    """An installed plugin is broken (cannot load, registers something unusable): the message
    names the plugin and the distribution that shipped it. Every command stops on it, as on an
    invalid config, but the user is told it is a plugin, not their config file."""


class TransitionError(GatewayError):
    """The lifecycle forbids this change in the conversation's current state."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


class NotFound(GatewayError):
    code = "not_found"


class VersionConflict(GatewayError):
    """The stored conversation moved on since it was read; reload and decide again."""

    code = "conflict"


class InvalidInput(GatewayError):
    code = "invalid_request"


class SignatureError(GatewayError):
    code = "invalid_signature"


class StoreUnavailable(GatewayError):
    """The store is unreachable or too slow right now (a Redis outage or hang): nothing was
    acknowledged, so the caller may retry; a 503, not a 500, because nothing is broken here."""

    code = "store_unavailable"


def is_credentials_refusal(exc: BaseException) -> bool:
    """Whether `exc` is a server refusing our credentials (redis-py's AuthenticationError:
    WRONGPASS, NOAUTH); told by class name, so this module needs no store's client library."""
    return any(klass.__name__ == "AuthenticationError" for klass in type(exc).__mro__)


def refused_credentials(exc: BaseException) -> bool:
    """Whether `exc` or an error in its chain of causes refuses our credentials: unlike an
    outage, waiting does not fix that."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if is_credentials_refusal(cause):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


class ChannelError(GatewayError):
    code = "channel_error"

    def __init__(
        self,
        message: str,
        *,
        provider_code: str | None = None,
        closes_window: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.provider_code = provider_code
        self.closes_window = closes_window
        self.retry_after = retry_after
        """Seconds the provider asked us to wait before trying again (its `Retry-After`)."""


class TransientChannelError(ChannelError):
    code = "channel_unavailable"


class PermanentChannelError(ChannelError):
    code = "channel_rejected"


HTTP_STATUS: dict[str, int] = {
    "invalid_request": 400,
    "invalid_json": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "invalid_signature": 403,
    "not_on_queue": 403,
    "not_assignee": 403,
    "not_found": 404,
    "already_taken": 409,
    "conflict": 409,
    "invalid_transition": 409,
    "window_closed": 409,
    "max_active_reached": 409,
    "agent_offline": 409,
    "request_timeout": 408,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "too_many_connections": 429,
    "store_unavailable": 503,
    "channel_unavailable": 502,
    "channel_rejected": 422,
    "idempotency_key_reused": 422,
    # A channel plugin broke the adapter contract (gateway.sink): the provider should retry.
    "adapter_error": 500,
}


class ChannelStartError(Exception):
    """A channel adapter's `start()` failed: the gateway does not serve with a channel missing,
    and says which one and why in one line (the traceback goes to the log)."""
