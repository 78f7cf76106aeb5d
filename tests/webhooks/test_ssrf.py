"""The SSRF guard: which receiver URLs pass, which are refused and why.

Nothing here connects anywhere. IP literals and /etc/hosts names resolve without the network;
any other name goes through a fake `socket.getaddrinfo`.
"""

from __future__ import annotations

import socket

import pytest

from webhooks import ssrf
from webhooks.ssrf import (
    Receiver,
    ReceiverLookupFailed,
    WebhookUrlRefused,
    address_allowed,
    check_syntax,
    receiver_for,
)


class FakeDns:
    """Stands in for socket.getaddrinfo: each call takes the next answer (a list of addresses,
    or an exception to raise), whatever the name, and is recorded."""

    def __init__(self, *answers: list[str] | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple] = []

    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):
        self.calls.append((host, port, type))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return [
            (socket.AF_INET6, type, 6, "", (address, port, 0, 0))
            if ":" in address
            else (socket.AF_INET, type, 6, "", (address, port))
            for address in answer
        ]


@pytest.fixture
def fake_dns(monkeypatch):
    def install(*answers: list[str] | Exception) -> FakeDns:
        fake = FakeDns(*answers)
        monkeypatch.setattr(ssrf.socket, "getaddrinfo", fake)
        return fake

    return install


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://localhost/", "loopback"),
        ("http://localhost./", "loopback"),
        ("http://LOCALHOST:8080/hook", "loopback"),
        ("http://127.0.0.1/", "loopback"),
        # Spellings the OS reads as 127.0.0.1; only resolving them shows it.
        ("http://127.1/", "loopback"),
        ("http://2130706433/", "loopback"),
        ("http://0x7f000001/", "loopback"),
        ("http://0177.0.0.1/", "loopback"),
        ("http://[::1]:8080/x", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://10.0.0.1/", "private"),
        ("http://172.16.5.4/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://[fc00::1]/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),  # cloud metadata
        ("http://[fe80::1]/", "link-local"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[ff02::1]/", "multicast"),
        ("http://[ff0e::1]/", "multicast"),  # global scope, and is_global says True
        ("http://100.64.0.1/", "shared"),
        ("http://240.0.0.1/", "reserved"),
        ("http://255.255.255.255/", "reserved"),
        ("http://[::7f00:1]/", "reserved"),  # IPv4-compatible, deprecated
        ("http://192.0.2.1/", "special-purpose"),  # documentation
        ("http://198.18.0.1/", "special-purpose"),  # benchmarking
        ("http://[2001:db8::1]/", "special-purpose"),  # documentation
        ("http://[fec0::1]/", "special-purpose"),  # site-local, is_global says True
        ("http://[2002:7f00:1::1]/", "loopback"),  # 6to4 around 127.0.0.1
        ("http://[2002:a00:1::1]/", "private"),  # 6to4 around 10.0.0.1
    ],
)
def test_non_public_receivers_are_refused(url, kind):
    refusal = rf", an? {kind}\b.*address; receivers must be on public addresses$"
    with pytest.raises(WebhookUrlRefused, match=refusal):
        receiver_for(url, allow_private=False)


def test_the_refusal_names_the_host_and_the_address_it_resolves_to():
    with pytest.raises(WebhookUrlRefused) as refused:
        receiver_for("http://127.1/", allow_private=False)
    assert str(refused.value) == (
        "webhook URL host 127.1 resolves to 127.0.0.1, a loopback address; "
        "receivers must be on public addresses"
    )


def test_the_refusal_names_the_ipv4_address_a_wrapper_carries():
    with pytest.raises(WebhookUrlRefused, match=r"is 2002:7f00:1::1, which carries 127\.0\.0\.1"):
        receiver_for("http://[2002:7f00:1::1]/", allow_private=False)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "file:///etc/passwd",
        "gopher://example.com:70/_x",
        "javascript:alert(1)",
        "example.com/hook",
        "//example.com/hook",
        "http://",
        "http:///hook",
        "http://:8080/hook",
        "https://user:pass@example.com/",
        "https://user@example.com/",
        "https://@example.com/",
        "http://[::1]:80x/",
        "https://example.com/" + "a" * 2029,
        "",
        None,
        42,
        " http://example.com/",
        "http://example.com/\n",
        "http://exa\tmple.com/",
        "http://example.com/a b",
        "http://example.com/\x00",
        "http://example.com/\u200b",
        "http://[127.0.0.1]/",
        "http://[::1/",
        "http://[v1.fe]/",
        "http://[fe80::1%25eth0]/",
        "http://example%2ecom/",
        "http://a..b/",
        "http://./",
        "http://" + "a" * 64 + ".com/",
        "http://exämple.com/",
        "http://example.com\\@127.0.0.1/",
    ],
)
def test_malformed_urls_are_refused(url):
    with pytest.raises(WebhookUrlRefused):
        check_syntax(url)


@pytest.mark.parametrize("port", ["0", "65536", "99999", "-1", "+80", "http", "8%30"])
def test_a_bad_port_is_refused_in_one_sentence(port):
    with pytest.raises(WebhookUrlRefused) as refused:
        check_syntax(f"https://example.com:{port}/hook")
    assert str(refused.value) == "webhook URL port must be a number from 1 to 65535"


def test_malformed_urls_are_refused_before_any_lookup(fake_dns):
    dns = fake_dns()
    with pytest.raises(WebhookUrlRefused, match="user name or password"):
        receiver_for("https://user:pass@example.com/", allow_private=True)
    assert dns.calls == []


def test_a_url_of_2048_characters_is_long_enough():
    check_syntax("https://example.com/" + "a" * 2028)


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("https://8.8.8.8/hook", "8.8.8.8"),
        ("http://1.1.1.1/", "1.1.1.1"),
        ("https://[2606:4700:4700::1111]/hook", "2606:4700:4700::1111"),
    ],
)
def test_public_addresses_are_allowed(url, address):
    assert receiver_for(url, allow_private=False).addresses == (address,)


def test_allow_private_lets_loopback_through():
    receiver = receiver_for("http://127.0.0.1:8080/hook", allow_private=True)
    assert receiver.addresses == ("127.0.0.1",)
    assert receiver.host_header == "127.0.0.1:8080"


@pytest.mark.parametrize("allow_private", [False, True])
def test_allow_private_defaults_to_the_setting(settings, allow_private):
    settings.HOKUSAI_WEBHOOK_ALLOW_PRIVATE = allow_private
    if allow_private:
        assert receiver_for("http://127.0.0.1/").addresses == ("127.0.0.1",)
    else:
        with pytest.raises(WebhookUrlRefused):
            receiver_for("http://127.0.0.1/")


@pytest.mark.parametrize(
    ("url", "expected", "host_header"),
    [
        ("http://8.8.8.8", Receiver("http", "8.8.8.8", 80, "/", ("8.8.8.8",)), "8.8.8.8"),
        ("https://8.8.8.8/", Receiver("https", "8.8.8.8", 443, "/", ("8.8.8.8",)), "8.8.8.8"),
        ("http://8.8.8.8:80/x", Receiver("http", "8.8.8.8", 80, "/x", ("8.8.8.8",)), "8.8.8.8"),
        (
            "http://8.8.8.8:443/x",
            Receiver("http", "8.8.8.8", 443, "/x", ("8.8.8.8",)),
            "8.8.8.8:443",
        ),
        (
            "https://8.8.8.8:8443/hooks/in?a=1&b=%20#fragment",
            Receiver("https", "8.8.8.8", 8443, "/hooks/in?a=1&b=%20", ("8.8.8.8",)),
            "8.8.8.8:8443",
        ),
        ("http://8.8.8.8?q=1", Receiver("http", "8.8.8.8", 80, "/?q=1", ("8.8.8.8",)), "8.8.8.8"),
        ("http://8.8.8.8/x?", Receiver("http", "8.8.8.8", 80, "/x", ("8.8.8.8",)), "8.8.8.8"),
        (
            "http://8.8.8.8/caf%C3%A9/ü?q=ü",
            Receiver("http", "8.8.8.8", 80, "/caf%C3%A9/%C3%BC?q=%C3%BC", ("8.8.8.8",)),
            "8.8.8.8",
        ),
        (
            "https://[2606:4700:4700::1111]/",
            Receiver("https", "2606:4700:4700::1111", 443, "/", ("2606:4700:4700::1111",)),
            "[2606:4700:4700::1111]",
        ),
        (
            "HTTPS://[2606:4700:4700::1111]:8443/x",
            Receiver("https", "2606:4700:4700::1111", 8443, "/x", ("2606:4700:4700::1111",)),
            "[2606:4700:4700::1111]:8443",
        ),
    ],
)
def test_receiver_fields(url, expected, host_header):
    receiver = receiver_for(url, allow_private=False)
    assert receiver == expected
    assert receiver.host_header == host_header


def test_a_name_is_resolved_with_its_port_and_kept_lower_case_without_the_trailing_dot(fake_dns):
    dns = fake_dns(["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "93.184.215.14"])
    receiver = receiver_for("HTTPS://Hooks.Example.COM.:8443/in", allow_private=False)
    assert dns.calls == [("hooks.example.com", 8443, socket.SOCK_STREAM)]
    assert receiver.host == "hooks.example.com"
    assert receiver.host_header == "hooks.example.com:8443"
    assert receiver.addresses == ("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c")


def test_every_check_resolves_again_so_rebinding_to_loopback_is_refused(fake_dns):
    dns = fake_dns(["93.184.215.14"], ["127.0.0.1"])
    assert receiver_for("https://rebind.example/", allow_private=False).addresses == (
        "93.184.215.14",
    )
    with pytest.raises(WebhookUrlRefused, match=r"rebind\.example resolves to 127\.0\.0\.1"):
        receiver_for("https://rebind.example/", allow_private=False)
    assert len(dns.calls) == 2


@pytest.mark.parametrize(
    "addresses",
    [
        ["93.184.215.14", "10.0.0.1"],
        ["10.0.0.1", "93.184.215.14"],
        ["2606:2800:21f:cb07:6820:80da:af6b:8b2c", "fd00::1"],
    ],
)
def test_one_private_address_among_public_ones_is_refused(fake_dns, addresses):
    fake_dns(addresses)
    with pytest.raises(WebhookUrlRefused, match="a private address"):
        receiver_for("https://mixed.example/", allow_private=False)


def test_a_failed_lookup_raises_receiver_lookup_failed(fake_dns):
    fake_dns(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    with pytest.raises(ReceiverLookupFailed, match=r"nowhere\.example") as failed:
        receiver_for("https://nowhere.example/", allow_private=False)
    assert isinstance(failed.value, OSError)
    assert isinstance(failed.value.__cause__, socket.gaierror)


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("2606:4700:4700::1111%eth0", True),  # the zone id is stripped before parsing
        ("::ffff:8.8.8.8", True),  # a mapped address is its IPv4 address
        ("2002:808:808::1", True),  # 6to4 around 8.8.8.8
        ("fe80::1%eth0", False),
        ("::ffff:10.0.0.1", False),
        ("64:ff9b::7f00:1", False),  # NAT64 well-known prefix
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
        ("127.0.0.1", False),
        ("100.127.255.255", False),
        ("not an address", False),
        ("", False),
    ],
)
def test_address_allowed(address, allowed):
    assert address_allowed(address) is allowed
