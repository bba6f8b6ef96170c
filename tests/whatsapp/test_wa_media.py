"""Media download: only from the provider's hosts (or the configured API host), every
redirect re-checked, credentials only where they belong, size capped."""

from __future__ import annotations

import re
from datetime import timedelta

import aiohttp
import pytest
from yarl import URL

from gateway.channels import MediaSource
from gateway.errors import PermanentChannelError
from gateway.model import Attachment
from plugins.whatsapp import make_adapter
from plugins.whatsapp.media import META_MEDIA_HOSTS, TWILIO_MEDIA_HOSTS, HostPolicy, download
from tests.whatsapp.fakes import PNG, FakeGraph, FakeTwilio
from tests.whatsapp.support import (
    TWILIO_SID,
    TWILIO_TOKEN,
    make_context,
    meta_config,
    twilio_config,
)

MEDIA_PATH = f"/2010-04-01/Accounts/{TWILIO_SID}/Messages/MM1/Media/ME1"


def by_url(url: str) -> Attachment:
    return Attachment(kind="image", url=url)


def by_ref(ref: str) -> Attachment:
    """A Meta attachment: a URL when it looks like one, else a media id."""
    if ref.startswith(("http://", "https://")):
        return Attachment(kind="image", url=ref)
    return Attachment(kind="image", media_id=ref)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1", True),
        ("https://media.twiliocdn.com/AC1/abc", True),
        ("https://mms.twiliocdn.com/AC1/abc", True),
        ("https://s3.twiliocdn.com/x", True),
        ("http://api.twilio.com/x", False),
        ("https://api.twilio.com:8443/x", False),
        ("https://api.twilio.com.evil.example/x", False),
        ("https://eviltwiliocdn.com/x", False),
        ("https://twiliocdn.com.evil/x", False),
        ("https://user:pw@api.twilio.com/x", False),
        ("http://169.254.169.254/latest/meta-data/", False),
        ("http://127.0.0.1:6379/", False),
        ("file:///etc/passwd", False),
    ],
)
def test_twilio_host_policy(url: str, allowed: bool) -> None:
    assert (
        HostPolicy(TWILIO_MEDIA_HOSTS, base_url="https://api.twilio.com").allows(URL(url))
        is allowed
    )


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1", True),
        ("https://scontent.xx.fbcdn.net/v/t1/abc", True),
        ("https://mmg.whatsapp.net/d/f/abc.enc", True),
        ("https://lookaside.fbsbx.com.evil.example/x", False),
        ("https://fbcdn.net.evil/x", False),
        ("https://media.example.com/updated-image.jpg", False),
        ("http://lookaside.fbsbx.com/x", False),
    ],
)
def test_meta_host_policy(url: str, allowed: bool) -> None:
    assert HostPolicy(META_MEDIA_HOSTS).allows(URL(url)) is allowed


def test_base_url_origin_only() -> None:
    policy = HostPolicy(TWILIO_MEDIA_HOSTS, base_url="http://127.0.0.1:8089")
    assert policy.allows(URL("http://127.0.0.1:8089/anything"))
    assert not policy.allows(URL("http://127.0.0.1:8090/anything"))
    assert not policy.allows(URL("https://127.0.0.1:8089/anything"))


async def test_twilio_fetch_from_api_host(
    fake_twilio: FakeTwilio, http_session: aiohttp.ClientSession
) -> None:
    adapter = make_adapter(
        make_context(twilio_config(api_base_url=fake_twilio.base_url), http_session)
    )
    assert isinstance(adapter, MediaSource)
    media = await adapter.fetch_media(by_url(fake_twilio.base_url + MEDIA_PATH))
    assert media.data == PNG and media.mime_type == "image/png"
    # A redirect that stays on an allowed host is followed (and re-checked).
    media = await adapter.fetch_media(by_url(fake_twilio.base_url + MEDIA_PATH[:-3] + "MEin"))
    assert media.data == PNG


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "https://evil.example.com/cat.jpg",
        "https://api.twilio.com.evil.example/x",
        "cat.jpg",
        "not a url at all",
    ],
)
async def test_twilio_refuses_other_hosts(
    url: str, fake_twilio: FakeTwilio, http_session: aiohttp.ClientSession
) -> None:
    adapter = make_adapter(
        make_context(twilio_config(api_base_url=fake_twilio.base_url), http_session)
    )
    with pytest.raises(PermanentChannelError):
        await adapter.fetch_media(by_url(url))


async def test_twilio_refuses_redirect_off_list(
    fake_twilio: FakeTwilio, http_session: aiohttp.ClientSession
) -> None:
    adapter = make_adapter(
        make_context(twilio_config(api_base_url=fake_twilio.base_url), http_session)
    )
    with pytest.raises(PermanentChannelError) as info:
        await adapter.fetch_media(by_url(fake_twilio.base_url + MEDIA_PATH[:-3] + "MEout"))
    assert "169.254.169.254" in str(info.value)


@pytest.mark.parametrize(
    "path",
    [
        f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json",  # the account's message log
        "/2010-04-01/Accounts/AC0ther/Messages/MM1/Media/ME1",  # another account's media
        f"/2010-04-01/Accounts/{TWILIO_SID}/Messages/MM1/Media/ME1/../../../../Messages.json",
        f"/2010-04-01/Accounts/{TWILIO_SID}/Messages/MM1/Media/ME1?x=/Messages.json",
    ],
)
async def test_twilio_fetches_only_media_paths_on_its_api_host(
    path: str, fake_twilio: FakeTwilio, http_session: aiohttp.ClientSession
) -> None:
    """A MediaUrl on the API host is sent the account's credentials: a signed webhook naming
    another path there must not hand an agent what the API answers to them (audit)."""
    adapter = make_adapter(
        make_context(twilio_config(api_base_url=fake_twilio.base_url), http_session)
    )
    try:
        media = await adapter.fetch_media(by_url(fake_twilio.base_url + path))
    except PermanentChannelError as exc:
        assert "not a media path" in str(exc) or "answered 404" in str(exc)
    else:  # the query string is not part of the path: ME1's own bytes, nothing else
        assert media.data == PNG, path


def test_twilio_api_host_allows_media_paths_only() -> None:
    policy = HostPolicy(
        TWILIO_MEDIA_HOSTS,
        api_hosts=("api.twilio.com",),
        api_path=re.compile(r"/2010-04-01/Accounts/AC1/Messages/[A-Za-z0-9]+/Media/[A-Za-z0-9]+"),
    )
    media = "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1"
    assert policy.allows(URL(media))
    assert not policy.allows(URL("https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json"))
    assert policy.allows(URL("https://mms.twiliocdn.com/AC1/anything"))  # the CDN: no credentials


async def test_meta_fetch_by_media_id(
    fake_graph: FakeGraph, http_session: aiohttp.ClientSession
) -> None:
    adapter = make_adapter(
        make_context(meta_config(api_base_url=fake_graph.base_url), http_session)
    )
    media = await adapter.fetch_media(by_ref("m1"))
    assert media.data == PNG
    assert media.mime_type == "image/png"  # the Graph API's declared type wins


@pytest.mark.parametrize(
    "ref",
    [
        "evil",  # Graph answers with a URL on a private address
        "lookalike",  # ... or on a look-alike host
        "../../admin",  # not a media id
        "https://media.example.com/updated-image.jpg",  # the edit fixture's URL: not Meta's
    ],
)
async def test_meta_refuses(
    ref: str, fake_graph: FakeGraph, http_session: aiohttp.ClientSession
) -> None:
    adapter = make_adapter(
        make_context(meta_config(api_base_url=fake_graph.base_url), http_session)
    )
    with pytest.raises(PermanentChannelError):
        await adapter.fetch_media(by_ref(ref))


async def test_meta_fetches_a_webhooks_url_only_from_its_media_hosts(
    fake_graph: FakeGraph, http_session: aiohttp.ClientSession
) -> None:
    """A URL in a signed webhook on the Graph API's own host would be fetched with the access
    token, and the API's answer handed to an agent as media (audit, on Twilio's side). The
    same bytes are fetched when Graph itself names that URL for a media id."""
    adapter = make_adapter(
        make_context(meta_config(api_base_url=fake_graph.base_url), http_session)
    )
    with pytest.raises(PermanentChannelError, match="refusing"):
        await adapter.fetch_media(by_ref(fake_graph.base_url + "/media-bin/m1"))
    assert (await adapter.fetch_media(by_ref("m1"))).data == PNG


async def test_unknown_media_id(fake_graph: FakeGraph, http_session: aiohttp.ClientSession) -> None:
    adapter = make_adapter(
        make_context(meta_config(api_base_url=fake_graph.base_url), http_session)
    )
    with pytest.raises(PermanentChannelError) as info:
        await adapter.fetch_media(by_ref("m404"))
    assert info.value.provider_code == "100"


async def test_size_cap(fake_twilio: FakeTwilio, http_session: aiohttp.ClientSession) -> None:
    policy = HostPolicy(TWILIO_MEDIA_HOSTS, base_url=fake_twilio.base_url)
    auth = {"Authorization": aiohttp.encode_basic_auth(TWILIO_SID, TWILIO_TOKEN)}
    media = await download(
        http_session,
        fake_twilio.base_url + MEDIA_PATH,
        policy=policy,
        headers_for=lambda url: auth,
        time_limit=timedelta(seconds=5),
    )
    assert media.data == PNG
    with pytest.raises(PermanentChannelError) as info:
        await download(
            http_session,
            fake_twilio.base_url + MEDIA_PATH,
            policy=policy,
            headers_for=lambda url: auth,
            time_limit=timedelta(seconds=5),
            max_bytes=10,
        )
    assert "larger than 10 bytes" in str(info.value)


async def test_meta_prefers_media_id_to_expiring_url(
    fake_graph: FakeGraph, http_session: aiohttp.ClientSession
) -> None:
    adapter = make_adapter(
        make_context(meta_config(api_base_url=fake_graph.base_url), http_session)
    )
    # The webhook's lookaside URL has expired by now; the id resolves to a fresh URL.
    attachment = Attachment(
        kind="image", media_id="m1", url="https://lookaside.fbsbx.com/whatsapp/expired"
    )
    media = await adapter.fetch_media(attachment)
    assert media.data == PNG


async def test_attachment_without_reference(http_session: aiohttp.ClientSession) -> None:
    adapter = make_adapter(make_context(meta_config(), http_session))
    with pytest.raises(PermanentChannelError):
        await adapter.fetch_media(Attachment(kind="image"))
