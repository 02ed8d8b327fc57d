"""Where a media value's bytes come from: a local file, or (opt-in) an http(s) URL fetched under a policy.

`media_source(value, index, kind, config)` is what the image, audio and video readers call. A string matching
`scheme://` is a URL: refused unless `config.allow_remote_media`; switched on, `fetch_remote` applies the policy of
docs/remote-media.md on every hop:

- schemes http and https only (the first URL and every redirect target; never file:, ftp:, data:, ...);
- the host is resolved once per hop and refused when ANY of its addresses is not public (loopback, private,
  link-local, shared, site-local, reserved, IPv4 inside IPv6 forms of those), unless
  `config.allow_private_remote_media` or the address lies in `config.allowed_remote_networks`; unspecified,
  multicast and broadcast addresses never; the connection goes to the addresses that were checked (no second
  lookup a rebinding DNS server could answer differently), TLS still verifies the URL's host name;
- at most `config.max_remote_redirects` redirects, `config.max_remote_bytes` per body (declared or not), and one
  total deadline, `config.remote_timeout_seconds`, over resolution, connection, TLS, every hop and the whole body
  (a watchdog shuts the socket down when it passes, so a server sending one byte at a time cannot hold a fetch).

Every refusal is a `RemoteMediaError` naming the item index, with `rule` set to the check that refused it:
"disabled", "url", "scheme", "address", "resolve", "connect", "tls", "http", "redirects", "size" or "deadline".
Proxy settings (HTTP_PROXY, ...) are not used: the checked address is the one connected to.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .inputs_e5omni import MediaDecodeError, RemoteMediaError

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")

#: Default cap on one fetched media body (config.max_remote_bytes overrides it).
MAX_REMOTE_BYTES = 200_000_000
#: Default total deadline of one fetch and redirect limit (config.remote_timeout_seconds / max_remote_redirects).
REMOTE_TIMEOUT_SECONDS = 30.0
MAX_REMOTE_REDIRECTS = 5
_REMOTE_SCHEMES = ("http", "https")
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 65536
#: RFC 6052's well-known NAT64 prefix: the last 32 bits are an IPv4 address, judged as that address.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: Address kinds no opt-in admits: they never name one server.
NEVER_FETCHED = ("unspecified", "multicast", "broadcast")

Resolver = Callable[[str, int], list[str]]


def _error(message: str, index: int | None, rule: str) -> RemoteMediaError:
    err = RemoteMediaError(message, index)
    err.rule = rule  # which check refused (pickles with the error: E5OmniInputError keeps its __dict__)
    return err


def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to for a TCP connection (the system resolver, one lookup), in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def address_kind(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """None for a public (globally routable unicast) address, else what it is: "loopback", "private", ...

    IPv4 carried in IPv6 (IPv4-mapped ::ffff:a.b.c.d, NAT64 64:ff9b::/96, 6to4 2002::/16) is judged as the IPv4
    address it carries, so ::ffff:127.0.0.1 is loopback and ::ffff:8.8.8.8 public."""
    ip = ipaddress.ip_address(str(address).split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
    if ip.version == 6:
        carried = ip.ipv4_mapped
        if carried is None and ip in _NAT64:
            carried = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if carried is not None:
            kind = address_kind(carried)
            return None if kind is None else f"{kind} (IPv4 {carried} inside {ip})"
        if ip.sixtofour is not None and (kind := address_kind(ip.sixtofour)) is not None:
            return f"{kind} (IPv4 {ip.sixtofour} inside 6to4 {ip})"
        if ip.is_site_local:
            return "site-local"
    if ip.is_unspecified:
        return "unspecified"
    if ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255"):
        return "broadcast"
    if ip.is_multicast:
        return "multicast"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "not globally routable"
    return None


@dataclass(frozen=True)
class RemotePolicy:
    """What `fetch_remote` may do; `from_config` reads it from an E5OmniConfig. `resolver` is the host lookup
    (tests give a stub that answers without DNS), `ssl_context` the TLS context (tests trust their own CA)."""

    enabled: bool = False
    allow_private: bool = False
    networks: tuple = ()
    max_bytes: int = MAX_REMOTE_BYTES
    timeout: float = REMOTE_TIMEOUT_SECONDS
    max_redirects: int = MAX_REMOTE_REDIRECTS
    resolver: Resolver = resolve_host
    ssl_context: object | None = None  # None: ssl.create_default_context() (system CAs, host name checked)

    @classmethod
    def from_config(cls, config) -> RemotePolicy:
        if config is None:
            return cls()
        networks = getattr(config, "allowed_remote_networks", None) or ()
        return cls(
            enabled=bool(getattr(config, "allow_remote_media", False)),
            allow_private=bool(getattr(config, "allow_private_remote_media", False)),
            networks=tuple(ipaddress.ip_network(str(net), strict=False) for net in networks),
            max_bytes=int(getattr(config, "max_remote_bytes", MAX_REMOTE_BYTES)),
            timeout=float(getattr(config, "remote_timeout_seconds", REMOTE_TIMEOUT_SECONDS)),
            max_redirects=int(getattr(config, "max_remote_redirects", MAX_REMOTE_REDIRECTS)),
        )

    def refusal(self, address: str) -> str | None:
        """Why `address` may not be fetched under this policy (its kind), or None."""
        kind = address_kind(address)
        if kind is None or kind.partition(" (")[0] in NEVER_FETCHED:
            return kind
        if self.allow_private:
            return None
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        candidates = [ip] + ([ip.ipv4_mapped] if getattr(ip, "ipv4_mapped", None) is not None else [])
        if any(c.version == net.version and c in net for c in candidates for net in self.networks):
            return None
        return kind


def media_source(value, index: int, kind: str, config) -> Path | bytes:
    """A local file's path, or (remote media switched on) the bytes of an http(s) URL fetched under the policy
    above. Other URL schemes (file:, ftp:, data:) are refused: a URL never reads a local path."""
    text = os.fspath(value)
    if _URL.match(text):
        policy = RemotePolicy.from_config(config)
        if not policy.enabled:
            raise _error(
                f"{kind} {text!r} is a URL; remote media is disabled. Download it yourself or set "
                "config.allow_remote_media=True to let the processor fetch it",
                index,
                "disabled",
            )
        return fetch_remote(text, index, kind, policy)
    if not text.strip():
        raise MediaDecodeError(f"{kind} path is empty", index)
    try:
        path = Path(text).expanduser()
        if path.is_file():
            return path
        exists = path.exists()
    except (OSError, ValueError, RuntimeError) as err:  # a name too long, an unknown ~user, a NUL byte
        raise MediaDecodeError(f"cannot use {kind} path {text[:200]!r}: {err.__class__.__name__}", index) from err
    if exists:  # a directory, a FIFO, a device: never opened
        raise MediaDecodeError(f"{kind} path {text!r} is not a regular file", index)
    raise MediaDecodeError(f"{kind} file not found: {text!r}", index)


class _Deadline:
    """One fetch's total deadline. A timer thread shuts the live connection down when it passes (a blocked read
    then returns at once, whatever the per-read timeout), and `remaining()` bounds every blocking step."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = False
        self._lock = threading.Lock()
        self._watched: socket.socket | None = None  # a dup of the live connection's socket (survives TLS wrapping)
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def passed(self) -> bool:
        return self.expired or self.remaining() <= 0

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._watched is not None:
                try:
                    self._watched.shutdown(socket.SHUT_RDWR)  # shuts the connection down for every descriptor
                except OSError:
                    pass

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._release()
            self._watched = sock.dup()
            if self.expired:
                try:
                    self._watched.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _release(self) -> None:
        if self._watched is not None:
            self._watched.close()
            self._watched = None

    def release(self) -> None:
        with self._lock:
            self._release()

    def cancel(self) -> None:
        self._timer.cancel()
        self.release()


class _Fetch:
    """One URL's fetch: hops, checks, body; `where()` names the URL (and the redirect hop) in every message."""

    def __init__(self, url: str, index: int | None, kind: str, policy: RemotePolicy):
        self.url, self.index, self.kind, self.policy = url, index, kind, policy
        self.current, self.hop = url, 0
        self.deadline = _Deadline(policy.timeout)

    def where(self) -> str:
        if self.hop == 0:
            return f"{self.kind} URL {self.url!r}"
        return f"{self.kind} URL {self.url!r} (redirect {self.hop} to {self.current!r})"

    def fail(self, message: str, rule: str) -> RemoteMediaError:
        return _error(f"{self.where()}: {message}", self.index, rule)

    def cannot(self, message: str, rule: str) -> RemoteMediaError:
        return _error(f"cannot fetch {self.where()}: {message}", self.index, rule)

    def too_slow(self, received: int | None = None) -> RemoteMediaError:
        got = "" if received is None else f" ({received} bytes of the body received)"
        return self.fail(
            f"not fetched within remote_timeout_seconds={self.policy.timeout:g} (the total for resolution, "
            f"connection, redirects and body){got}",
            "deadline",
        )

    # ------------------------------------------------------------------------------------------- one hop's target
    def target(self) -> tuple[str, str, int, str]:
        import urllib.parse

        parts = urllib.parse.urlsplit(self.current)
        scheme = parts.scheme.lower()
        if scheme not in _REMOTE_SCHEMES:
            if self.hop == 0:  # the message callers have matched since remote media existed
                raise _error(
                    f"{self.kind} URL scheme {scheme!r} is not fetched (only http and https)", self.index, "scheme"
                )
            raise self.fail(f"scheme {scheme!r} is not fetched (only http and https)", "scheme")
        try:
            host, port = parts.hostname, parts.port
        except ValueError as err:  # a port out of range or not a number
            raise self.fail(f"bad URL: {err}", "url") from err
        if not host:
            raise self.fail("the URL names no host", "url")
        port = port or (443 if scheme == "https" else 80)
        path = urllib.parse.quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
        if parts.query:
            path += "?" + urllib.parse.quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
        return scheme, host, port, path

    def addresses(self, host: str, port: int) -> list[str]:
        """The host's addresses, each checked; the lookup runs in a thread so that it too ends by the deadline."""
        result: dict = {}

        def lookup():
            try:
                result["addresses"] = list(self.policy.resolver(host, port))
            except Exception as err:  # gaierror, UnicodeError (a bad IDNA name), a stub's error
                result["error"] = err

        try:  # an address literal is its own (only) address: no lookup
            result["addresses"] = [str(ipaddress.ip_address(host))]
        except ValueError:
            thread = threading.Thread(target=lookup, daemon=True, name="e5omni-resolve")
            thread.start()
            thread.join(max(0.0, self.deadline.remaining()))
            if thread.is_alive():
                raise self.too_slow() from None
        if "error" in result:
            raise self.fail(f"cannot resolve host {host!r}: {result['error']}", "resolve") from result["error"]
        addresses = result["addresses"]
        if not addresses:
            raise self.fail(f"host {host!r} resolves to no address", "resolve")
        for address in addresses:
            kind = self.policy.refusal(address)
            if kind is None:
                continue
            label = address if host == address else f"host {host!r} resolves to {address}, which"
            base, _, detail = kind.partition(" (")
            what = f"a {base} address" + (f" ({detail}" if detail else "")
            if base in NEVER_FETCHED:
                raise self.fail(f"{label} is {what}, never fetched", "address")
            raise self.fail(
                f"{label} is {what}; only public addresses are fetched unless "
                "config.allow_private_remote_media=True or the address lies in config.allowed_remote_networks",
                "address",
            )
        return addresses

    # ------------------------------------------------------------------------------------------------- the fetch
    def run(self) -> bytes:
        import http.client
        import urllib.parse

        try:
            while True:
                scheme, host, port, path = self.target()
                addresses = self.addresses(host, port)
                connection = self.connection(scheme, host, port, addresses)
                try:
                    try:
                        connection.request("GET", path, headers={"User-Agent": "e5-omni", "Connection": "close"})
                        response = connection.getresponse()
                    except RemoteMediaError:
                        raise
                    except (OSError, http.client.HTTPException, ValueError) as err:
                        if self.deadline.passed():
                            raise self.too_slow() from err
                        import ssl

                        if isinstance(err, ssl.SSLError):  # the handshake: certificate, host name, protocol
                            rule = "tls"
                        else:
                            rule = "connect" if connection.sock is None else "http"
                        raise self.cannot(f"{err.__class__.__name__}: {err}", rule) from err
                    if response.status in _REDIRECTS:
                        location = response.getheader("Location")
                        if not location:
                            raise self.fail(f"HTTP {response.status} redirect without a Location", "http")
                        if self.hop >= self.policy.max_redirects:
                            raise self.fail(
                                f"more than max_remote_redirects={self.policy.max_redirects} redirects "
                                f"(the next one to {location!r})",
                                "redirects",
                            )
                        self.hop += 1
                        self.current = urllib.parse.urljoin(self.current, location.strip())
                        continue
                    if response.status != 200:
                        raise self.cannot(f"HTTP {response.status} {response.reason}", "http")
                    return self.body(connection, response)
                finally:
                    self.deadline.release()
                    connection.close()
        finally:
            self.deadline.cancel()

    def connection(self, scheme: str, host: str, port: int, addresses: list[str]):
        """An http.client connection to `host` (Host header, TLS server name and certificate check) whose socket goes
        to the first of the checked `addresses` that accepts, never to a fresh lookup of the name."""
        import http.client

        deadline = self.deadline

        def connect(_address, _timeout=None, source_address=None):
            error: OSError | None = None
            for address in addresses:
                if deadline.passed():
                    break
                try:
                    sock = socket.create_connection((address, port), timeout=max(0.001, deadline.remaining()))
                except OSError as err:
                    error = err
                    continue
                deadline.watch(sock)
                return sock
            if deadline.passed():
                raise TimeoutError("deadline passed while connecting")
            raise OSError(f"cannot connect to {host!r} at {', '.join(addresses)} port {port}: {error}")

        if scheme == "https":
            import ssl

            context = self.policy.ssl_context or ssl.create_default_context()
            connection = http.client.HTTPSConnection(host, port, context=context)
        else:
            connection = http.client.HTTPConnection(host, port)
        connection.timeout = max(0.001, deadline.remaining())
        connection._create_connection = connect  # http.client's own hook for opening the socket
        return connection

    def body(self, connection, response) -> bytes:
        cap = self.policy.max_bytes
        declared = response.getheader("Content-Length")
        declared = int(declared) if declared is not None and declared.strip().isdigit() else None
        if declared is not None and declared > cap:
            raise self.fail(f"declares {declared} bytes, more than max_remote_bytes={cap}", "size")
        chunks, total = [], 0
        while True:
            remaining = self.deadline.remaining()
            if remaining <= 0 or self.deadline.expired:
                raise self.too_slow(total)
            try:
                if connection.sock is not None:  # None once the response owns the socket ("Connection: close"):
                    connection.sock.settimeout(remaining)  # then the watchdog alone ends a read at the deadline
                chunk = response.read1(_CHUNK)  # what one read returns: never blocks for a whole chunk
            except Exception as err:  # OSError, http.client.IncompleteRead / HTTPException, a bad chunk size
                if self.deadline.passed():
                    raise self.too_slow(total) from err
                raise self.cannot(f"reading the body: {err.__class__.__name__}: {err}", "http") from err
            if not chunk:
                break
            total += len(chunk)
            if total > cap:
                raise self.fail(f"sent more than max_remote_bytes={cap} bytes", "size")
            chunks.append(chunk)
        if self.deadline.expired:  # the watchdog's shutdown reads as the end of the body
            raise self.too_slow(total)
        if declared is not None and total < declared:
            raise self.fail(f"ended after {total} of the {declared} bytes it declared", "http")
        return b"".join(chunks)


def fetch_remote(url: str, index: int | None, kind: str, policy: RemotePolicy) -> bytes:
    """The body of `url` under `policy` (see the module docstring); a `RemoteMediaError` (with `rule`) otherwise."""
    return _Fetch(url, index, kind, policy).run()


__all__ = [
    "MAX_REMOTE_BYTES",
    "NEVER_FETCHED",
    "RemotePolicy",
    "address_kind",
    "fetch_remote",
    "media_source",
    "resolve_host",
]
