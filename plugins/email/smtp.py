"""Submit a composed message over SMTP and say what a failure means for the retry policy.

4xx replies, dropped connections and time-outs are transient (the gateway retries with
backoff); 5xx replies are permanent and carry the SMTP code and the server's text. Secrets
never appear in the raised errors: only the server's reply is quoted.
"""

from __future__ import annotations

import ssl
from email.message import EmailMessage

import aiosmtplib

from gateway.errors import ChannelError, PermanentChannelError, TransientChannelError
from plugins.email.config import SmtpSettings


async def submit(
    settings: SmtpSettings,
    message: EmailMessage,
    *,
    sender: str,
    recipients: list[str],
    tls_context: ssl.SSLContext | None = None,
) -> None:
    """Send `message` (envelope `sender` -> `recipients`); raise a ChannelError on failure."""
    password = settings.password.get_secret_value() if settings.password else None
    try:
        await aiosmtplib.send(
            message,
            sender=sender,
            recipients=recipients,
            hostname=settings.host,
            port=settings.port,
            username=settings.username,
            password=password,
            use_tls=settings.tls == "implicit",
            start_tls=settings.tls == "starttls",
            timeout=settings.timeout.total_seconds(),
            tls_context=tls_context,
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        raise _recipients_error(exc) from None
    except aiosmtplib.SMTPResponseException as exc:
        raise classify(exc.code, exc.message) from None
    except (aiosmtplib.SMTPTimeoutError, aiosmtplib.SMTPServerDisconnected) as exc:
        raise TransientChannelError(f"smtp: {type(exc).__name__}: {exc.message}") from None
    except aiosmtplib.SMTPConnectError as exc:
        raise TransientChannelError(f"smtp: cannot connect: {exc.message}") from None
    except aiosmtplib.SMTPException as exc:  # e.g. STARTTLS required but not offered
        raise PermanentChannelError(f"smtp: {type(exc).__name__}: {exc.message}") from None
    except (OSError, TimeoutError) as exc:
        raise TransientChannelError(f"smtp: {type(exc).__name__}") from None


def classify(code: int, text: str) -> ChannelError:
    """Map an SMTP reply to the error telling the gateway whether to retry."""
    reply = f"smtp {code}: {' '.join(text.split())}"
    if 400 <= code < 500:
        return TransientChannelError(reply, provider_code=str(code))
    return PermanentChannelError(reply, provider_code=str(code))


def _recipients_error(exc: aiosmtplib.SMTPRecipientsRefused) -> ChannelError:
    refused = exc.recipients
    transient = [r for r in refused if 400 <= r.code < 500]
    first = transient[0] if transient else refused[0] if refused else None
    if first is None:
        return PermanentChannelError("smtp: all recipients refused")
    return classify(first.code, first.message)
