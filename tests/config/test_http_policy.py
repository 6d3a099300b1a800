"""The URL policy of ``http_request`` (config/http.py), decided without any connection:
every address here is only parsed and judged, never sent a packet. The tests that do
connect (tests/activities/test_http_guard.py) use 127.0.0.0/8 servers only."""

from __future__ import annotations

import ipaddress

import pytest

from config import ConfigError, HostDenied, UrlPolicy, load_settings
from config.http import embedded_ipv4, literal_address, parse_host_rules

DEFAULT = UrlPolicy()


def verdict(policy: UrlPolicy, host: str, *resolved: str) -> str | None:
    """None when allowed, else the refusal's message. ``resolved``: what DNS said for a
    name; a literal host stands for itself."""
    literal = literal_address(host)
    addresses = [ipaddress.ip_address(a) for a in resolved] if resolved else [literal]
    assert all(a is not None for a in addresses), host
    try:
        policy.check(host, addresses)  # type: ignore[arg-type]
    except HostDenied as e:
        return str(e)
    return None


METADATA_SPELLINGS = [
    "169.254.169.254",
    "169.254.169.254.",  # a trailing dot
    "2852039166",  # decimal
    "0251.0376.0251.0376",  # octal
    "0xa9fea9fe",  # hex
    "0xa9.0xfe.0xa9.0xfe",
    "169.254.43518",  # a.b.c with a 16-bit tail
    "169.16689662",  # a.b with a 24-bit tail
    "[::ffff:169.254.169.254]",  # IPv4-mapped IPv6
    "[::ffff:a9fe:a9fe]",
    "::ffff:169.254.169.254",
    "[0:0:0:0:0:ffff:169.254.169.254]",
    "[64:ff9b::a9fe:a9fe]",  # NAT64
    "[::a9fe:a9fe]",  # IPv4-compatible
    "[2002:a9fe:a9fe::1]",  # 6to4
    "[fd00:ec2::254]",  # AWS metadata over IPv6
    "100.100.100.200",  # Alibaba Cloud metadata
    "169.254.170.2",  # ECS task metadata
]


@pytest.mark.parametrize("host", METADATA_SPELLINGS)
def test_metadata_and_link_local_are_refused_by_default_in_every_spelling(host: str) -> None:
    message = verdict(DEFAULT, host)
    assert message is not None
    assert "metadata" in message or "link-local" in message
    assert "PLANSMITH_HTTP_ALLOW" in message  # says how an operator would lift it


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("[fe80::1]", "link-local"),
        ("[fe80::1%25eth0]", "link-local"),
        ("169.254.1.1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("0", "unspecified"),
        ("[::]", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("[ff02::1]", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("[::ffff:0.0.0.0]", "unspecified"),
    ],
)
def test_other_addresses_that_are_no_web_service_are_refused(host: str, why: str) -> None:
    message = verdict(DEFAULT, host)
    assert message is not None and why in message


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.1",
        "2130706433",
        "[::1]",
        "localhost",
        "10.1.2.3",
        "192.168.0.9",
        "172.16.5.4",
        "[fd12::1]",
        "93.184.216.34",
        "[2606:4700::1111]",
        "8.8.8.8",
    ],
)
def test_loopback_private_and_public_addresses_are_allowed_by_default(host: str) -> None:
    resolved = ("127.0.0.1",) if host == "localhost" else ()
    assert verdict(DEFAULT, host, *resolved) is None


def test_a_name_is_judged_by_every_address_it_resolves_to() -> None:
    assert verdict(DEFAULT, "metadata.google.internal", "169.254.169.254") is not None
    # one bad record among good ones is enough (the connection could pick any)
    message = verdict(DEFAULT, "mixed.example.com", "93.184.216.34", "::ffff:169.254.169.254")
    assert message is not None and "::ffff:a9fe:a9fe" in message
    assert verdict(DEFAULT, "www.example.com", "93.184.216.34", "2606:2800:220:1::1") is None
    assert verdict(DEFAULT, "nothing.example.com", "0.0.0.0") is not None
    with pytest.raises(HostDenied, match="no address"):
        DEFAULT.check("empty.example.com", [])


@pytest.mark.parametrize(
    "host",
    [
        "10.0.0.1",
        "192.168.1.1",
        "172.31.255.255",
        "100.64.0.1",
        "[fd12::1]",
        "[::ffff:10.0.0.1]",
        "167772161",
    ],
)
def test_private_ranges_can_be_opted_out(host: str) -> None:
    policy = UrlPolicy(allow_private=False)
    message = verdict(policy, host)
    assert message is not None and "PLANSMITH_HTTP_ALLOW_PRIVATE=false" in message
    assert verdict(policy, "127.0.0.1") is None
    assert verdict(policy, "8.8.8.8") is None


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.1",
        "2130706433",
        "0x7f000001",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "127.255.0.9",
    ],
)
def test_loopback_can_be_opted_out(host: str) -> None:
    policy = UrlPolicy(allow_loopback=False)
    message = verdict(policy, host)
    assert message is not None and "PLANSMITH_HTTP_ALLOW_LOOPBACK=false" in message


def test_the_deny_list_takes_names_patterns_addresses_and_cidrs() -> None:
    policy = UrlPolicy(
        deny=parse_host_rules(
            "internal.example.com, *.corp.example, 127.0.0.2, 10.9.0.0/16, [2001:db8::]/32",
            "PLANSMITH_HTTP_DENY",
        )
    )
    assert "'internal.example.com'" in (verdict(policy, "internal.example.com", "8.8.8.8") or "")
    assert "'*.corp.example'" in (verdict(policy, "db.corp.example", "8.8.8.8") or "")
    assert "'*.corp.example'" in (verdict(policy, "a.b.CORP.example.", "8.8.8.8") or "")
    assert verdict(policy, "corp.example", "8.8.8.8") is None  # the pattern: subdomains
    for host in ("127.0.0.2", "2130706434", "[::ffff:127.0.0.2]", "10.9.200.1", "[2001:db8::5]"):
        message = verdict(policy, host)
        assert message is not None and "PLANSMITH_HTTP_DENY" in message, host
    # a name that resolves into a denied network
    assert verdict(policy, "sneaky.example.com", "10.9.1.1") is not None
    assert verdict(policy, "127.0.0.1") is None
    assert verdict(policy, "10.8.0.1") is None
    # the name is refused before it is resolved
    with pytest.raises(HostDenied):
        policy.check_name("x.corp.example")


def test_the_deny_list_wins_over_the_allow_list() -> None:
    rules = parse_host_rules("10.0.0.0/8, api.example.com", "PLANSMITH_HTTP_ALLOW")
    deny = parse_host_rules("10.0.0.5, api.example.com", "PLANSMITH_HTTP_DENY")
    policy = UrlPolicy(allow=rules, deny=deny)
    assert verdict(policy, "10.0.0.5") is not None
    assert verdict(policy, "api.example.com", "10.0.0.1") is not None
    assert verdict(policy, "10.0.0.6") is None


def test_an_allow_list_is_the_only_way_out() -> None:
    policy = UrlPolicy(allow=parse_host_rules("api.example.com, *.svc.example, 192.0.2.0/24", "X"))
    assert verdict(policy, "api.example.com", "93.184.216.34") is None
    assert verdict(policy, "a.svc.example", "93.184.216.35") is None
    assert verdict(policy, "192.0.2.7") is None
    assert verdict(policy, "unknown.example.com", "192.0.2.8") is None  # by its address
    message = verdict(policy, "other.example.com", "93.184.216.34")
    assert message is not None and "not on the allow list (PLANSMITH_HTTP_ALLOW)" in message
    assert verdict(policy, "127.0.0.1") is not None  # loopback too, once a list is set


def test_an_allowed_name_does_not_lift_the_metadata_denial() -> None:
    """DNS of an allowed domain pointing at the metadata service is still refused; only an
    address or CIDR on the allow list lifts a default denial."""
    by_name = UrlPolicy(allow=parse_host_rules("*.example.com", "X"))
    assert verdict(by_name, "evil.example.com", "169.254.169.254") is not None
    by_address = UrlPolicy(allow=parse_host_rules("169.254.170.2", "X"))
    assert verdict(by_address, "169.254.170.2") is None
    assert verdict(by_address, "169.254.169.254") is not None


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2852039166", "169.254.169.254"),
        ("0251.0376.0251.0376", "169.254.169.254"),
        ("0xA9FEA9FE", "169.254.169.254"),
        ("127.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("example.com", None),
        ("1.2.3.4.5", None),
        ("deadbeef", None),
        ("09.1.1.1", None),  # 09 is no octal number
        ("", None),
    ],
)
def test_literal_addresses_are_read_as_the_c_library_reads_them(
    host: str, address: str | None
) -> None:
    got = literal_address(host)
    assert (str(got) if got is not None else None) == address


def test_embedded_ipv4_forms() -> None:
    def v4s(text: str) -> list[str]:
        return [str(a) for a in embedded_ipv4(ipaddress.ip_address(text))]

    assert v4s("::ffff:169.254.169.254") == ["169.254.169.254"]
    assert v4s("64:ff9b::a9fe:a9fe") == ["169.254.169.254"]
    assert "169.254.169.254" in v4s("2002:a9fe:a9fe::1")
    assert v4s("::1") == [] and v4s("::") == [] and v4s("2606:4700::1111") == []
    assert v4s("8.8.8.8") == []


@pytest.mark.parametrize(
    "entry", ["exa mple.com", "http://example.com", "10.0.0.0/33", "*example.com", "a..b"]
)
def test_a_bad_entry_stops_the_process_naming_the_variable_and_the_entry(
    entry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLANSMITH_HTTP_DENY", f"127.0.0.2, {entry}")
    with pytest.raises(ConfigError) as info:
        load_settings(env_file=None)
    assert "PLANSMITH_HTTP_DENY" in str(info.value)
    assert "entry 2" in str(info.value) and entry.split()[0] in str(info.value)


def test_settings_build_the_policy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANSMITH_HTTP_DENY", "127.0.0.2")
    monkeypatch.setenv("PLANSMITH_HTTP_ALLOW_PRIVATE", "false")
    http = load_settings(env_file=None).http
    policy = http.policy()
    assert verdict(policy, "127.0.0.2") is not None
    assert verdict(policy, "10.0.0.1") is not None
    assert verdict(policy, "127.0.0.1") is None
    assert http.max_timeout_s == 300 and http.max_response_bytes == 10 * 1024 * 1024


def test_a_default_timeout_above_the_maximum_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANSMITH_HTTP_TIMEOUT_S", "600")
    with pytest.raises(ConfigError, match="PLANSMITH_HTTP_TIMEOUT_S=600 is above"):
        load_settings(env_file=None)
