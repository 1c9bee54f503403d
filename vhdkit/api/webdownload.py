"""The ``web-download`` import method: which URLs the server may fetch, and
the fetch itself.

A customer names the URL, the server connects: without a filter that is a
way into the operator's network.  As Glance's ``[import_filtering_opts]``,
each of scheme, host and port has an allow list (when set, nothing else
passes) and a deny list (used when the allow list is empty).  On top of
Glance's rules, and by default, every address the host resolves to must be
a global unicast address: loopback, private, link-local, shared (CGN),
multicast, reserved and unspecified ranges are refused unless the operator
lists the host (its name, its address, or a network holding it) among the
allowed hosts.  The check runs on the resolved addresses and the connection
goes to one of exactly those addresses (a second lookup could answer
differently), and every redirect is checked the same way before it is
followed.
"""
from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import FrozenSet, List, Optional, Tuple, Union
from urllib.parse import urljoin, urlsplit

from .config import Settings

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

#: the schemes this server can fetch at all (the allow list narrows them)
FETCHABLE = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
#: redirects followed, each checked like the first URL
MAX_REDIRECTS = 5
#: longest URL accepted (Glance's image location limit)
MAX_URL = 2048


class UrlRefused(Exception):
    """The URL does not pass the import filter (or its host does not resolve)."""


class FetchFailed(Exception):
    """The remote server did not deliver the data (the message is for the log)."""


def _items(text: str) -> List[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _ports(text: str, what: str) -> FrozenSet[int]:
    out = set()
    for x in _items(text):
        if not x.isdigit() or not 0 < int(x) < 65536:
            raise ValueError(f"{what}: {x!r} is not a port number")
        out.add(int(x))
    return frozenset(out)


def _hosts(text: str) -> Tuple[FrozenSet[str], Tuple[Network, ...]]:
    """(host names, networks): an entry that parses as an address or a
    network (CIDR) is one, anything else a host name."""
    names, nets = set(), []
    for x in _items(text):
        try:
            nets.append(ipaddress.ip_network(x.strip("[]"), strict=False))
        except ValueError:
            names.add(x.lower().rstrip("."))
    return frozenset(names), tuple(nets)


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (only ``addresses``) and what to ask."""
    url: str
    scheme: str
    host: str
    port: int
    path: str
    addresses: Tuple[str, ...]


@dataclass(frozen=True)
class ImportFilter:
    schemes: FrozenSet[str]
    bad_schemes: FrozenSet[str]
    host_names: FrozenSet[str]
    host_nets: Tuple[Network, ...]
    bad_names: FrozenSet[str]
    bad_nets: Tuple[Network, ...]
    ports: FrozenSet[int]
    bad_ports: FrozenSet[int]

    @classmethod
    def from_settings(cls, cfg: Settings) -> "ImportFilter":
        """The filter the settings describe; ValueError names a malformed one."""
        schemes = frozenset(s.lower() for s in _items(cfg.import_allowed_schemes))
        if schemes - set(FETCHABLE):
            raise ValueError(f"VHDKIT_IMPORT_ALLOWED_SCHEMES: only {', '.join(FETCHABLE)} can be fetched")
        names, nets = _hosts(cfg.import_allowed_hosts)
        bad_names, bad_nets = _hosts(cfg.import_disallowed_hosts)
        return cls(schemes, frozenset(s.lower() for s in _items(cfg.import_disallowed_schemes)),
                   names, nets, bad_names, bad_nets,
                   _ports(cfg.import_allowed_ports, "VHDKIT_IMPORT_ALLOWED_PORTS"),
                   _ports(cfg.import_disallowed_ports, "VHDKIT_IMPORT_DISALLOWED_PORTS"))

    def _address_ok(self, host: str, addr: Address) -> bool:
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if self.host_names or self.host_nets:
            return host in self.host_names or any(addr in n for n in self.host_nets)
        if any(addr in n for n in self.bad_nets):
            return False
        return addr.is_global and not addr.is_multicast

    def check(self, url: str) -> Target:
        """The URL as a :class:`Target`, or :class:`UrlRefused`.  Resolves the
        host (blocking)."""
        if not isinstance(url, str) or not url or len(url) > MAX_URL or any(c in url for c in "\r\n\x00 "):
            raise UrlRefused("malformed URI")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise UrlRefused("malformed URI") from None
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").rstrip(".")
        if scheme not in FETCHABLE or not host or parts.username is not None or parts.password is not None:
            raise UrlRefused("unsupported URI")
        if (self.schemes and scheme not in self.schemes) or (not self.schemes and scheme in self.bad_schemes):
            raise UrlRefused("scheme refused")
        port = port if port is not None else DEFAULT_PORTS[scheme]
        if (self.ports and port not in self.ports) or (not self.ports and port in self.bad_ports):
            raise UrlRefused("port refused")
        if not (self.host_names or self.host_nets) and host in self.bad_names:
            raise UrlRefused("host refused")
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise UrlRefused("host does not resolve") from None
        addresses = []
        for info in infos:
            text = info[4][0].split("%", 1)[0]
            addr = ipaddress.ip_address(text)
            if not self._address_ok(host, addr):
                raise UrlRefused(f"address {addr} refused")
            if text not in addresses:
                addresses.append(text)
        if not addresses:
            raise UrlRefused("host does not resolve")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return Target(url, scheme, host, port, path, tuple(addresses))


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection to the checked addresses only (the Host header
    and TLS server name stay the URL's host)."""

    def __init__(self, target: Target, timeout: float):
        super().__init__(target.host, target.port, timeout=timeout)
        self._target = target
        #: the socket, kept past http.client handing it to the response
        self.raw: Optional[socket.socket] = None

    def connect(self) -> None:
        last: Optional[OSError] = None
        for addr in self._target.addresses:
            try:
                sock = socket.create_connection((addr, self._target.port), self.timeout)
                break
            except OSError as exc:
                last = exc
        else:
            raise last or OSError("no address to connect to")
        if self._target.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self._target.host)
        self.sock = self.raw = sock


class Download:
    """The body of a checked URL as a readable file, for the registry's upload.

    ``read`` raises :class:`FetchFailed` once ``stop`` is set (server shutdown:
    :meth:`abort` also wakes a read that waits for data), when no data came
    for the idle timeout, or when the body trickles slower than the minimum
    rate of uploads, so that the upload is aborted and its temporary file
    removed."""

    def __init__(self, flt: ImportFilter, url: str, cfg: Settings, stop: threading.Event):
        self._stop, self._cfg = stop, cfg
        self._conn: Optional[_PinnedConnection] = None
        self._received = 0
        self._started = time.monotonic()
        timeout = cfg.upload_idle_timeout
        for _ in range(MAX_REDIRECTS + 1):
            target = flt.check(url)
            conn = _PinnedConnection(target, timeout)
            try:
                conn.request("GET", target.path, headers={"User-Agent": "vhdkit-web-download", "Accept": "*/*"})
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise FetchFailed(f"GET {target.url}: {exc}") from None
            if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                url = urljoin(url, resp.getheader("Location"))
                conn.close()
                continue
            if resp.status != 200:
                conn.close()
                raise FetchFailed(f"GET {target.url}: HTTP {resp.status}")
            self._conn, self._resp = conn, resp
            self._declared = resp.length   # None: chunked, or until the server closes
            return
        raise FetchFailed(f"more than {MAX_REDIRECTS} redirects")

    def read(self, n: int = -1) -> bytes:
        if self._stop.is_set():
            raise FetchFailed("the server is shutting down")
        try:
            data = self._resp.read(n if n is not None and n >= 0 else 1 << 20)
        except (OSError, http.client.HTTPException) as exc:
            raise FetchFailed(f"reading the response: {exc}") from None
        self._received += len(data)
        if not data and self._declared is not None and self._received != self._declared:
            # http.client returns b"" when a body ends before its Content-Length
            raise FetchFailed(f"the body ended after {self._received} of {self._declared} bytes")
        if data and self._cfg.too_slow(self._received, time.monotonic() - self._started):
            raise FetchFailed(f"slower than {self._cfg.upload_min_rate} bytes/s")
        return data

    def abort(self) -> None:
        """Wake a read waiting for data (from another thread): it fails."""
        sock = self._conn.raw if self._conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
