"""The SSRF guard (SPEC §8) against the ways an address hides in a URL.

Each URL goes through the real guard, its name through the real resolver:
IPv6 literals, IPv4 addresses written in IPv6, decimal, octal and hex forms
of 127.0.0.1, a trailing dot, and IPv6 prefixes that carry an IPv4 address.
"""

from __future__ import annotations

import pytest

from docqueue_app.webhooks.destinations import RefusedDestination, check_destination


@pytest.mark.parametrize(
    "url, kind",
    [
        ("http://[::1]:8080/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://[::ffff:7f00:1]/hook", "loopback"),
        ("http://[::ffff:169.254.169.254]/latest/meta-data", "link-local"),
        ("http://2130706433/hook", "loopback"),  # 127.0.0.1 as one decimal number
        ("http://0177.0.0.1/hook", "loopback"),  # octal
        ("http://0x7f.1/hook", "loopback"),  # hex, two parts
        ("http://127.1/hook", "loopback"),
        ("http://0/hook", "unspecified"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://[fc00::1]/hook", "private"),
        ("http://[64:ff9b::a9fe:a9fe]/hook", "reserved"),  # NAT64 of 169.254.169.254
        # 6to4 carries an IPv4 address in its prefix: judged as that address.
        ("http://[2002:7f00:1::]/hook", "loopback"),
        ("http://[2002:a9fe:a9fe::1]/hook", "link-local"),
        ("http://[2002:a00:1::]/hook", "private"),
        # Site-local (fec0::/10): deprecated, never global, still routed in places.
        ("http://[fec0::1]/hook", "site-local"),
    ],
)
def test_a_non_public_address_in_any_spelling_is_refused(url, kind):
    with pytest.raises(RefusedDestination, match=f"is a {kind} address"):
        check_destination(url)


def test_localhost_with_a_trailing_dot_is_refused():
    # Whether the resolver finds "localhost." (127.0.0.1) or not, it is no receiver.
    with pytest.raises(RefusedDestination):
        check_destination("http://localhost./hook")


@pytest.mark.parametrize(
    "url", ["http://[2002:808:808::1]/hook", "http://[2606:4700:4700::1111]/", "http://8.8.8.8/"]
)
def test_a_public_address_is_accepted_as_the_address_to_connect_to(url):
    destination = check_destination(url)
    assert destination.addresses[0] == url.split("//")[1].split("/")[0].strip("[]")


def test_port_zero_is_refused_not_read_as_the_default_port():
    # urlsplit gives port 0, and "port or the default" sent http://host:0/ to port 80.
    with pytest.raises(RefusedDestination, match="port"):
        check_destination("http://8.8.8.8:0/hook")
