"""The remote-media policy (modeling_e5omni/media_remote_e5omni.py) against real HTTP servers on loopback.

Every redirect hop is re-checked (http/https only, public addresses only unless opted in, a bounded number of hops),
a host is refused when any of its addresses is not public, the connection goes to the address that was checked (no
second lookup), and one total deadline bounds a fetch however slowly the server sends. No test sends traffic
anywhere but 127.0.0.1: refused addresses are refused before a connection is opened, and the server's request log
shows that nothing else arrived. Hosts other than loopback literals go through a stub resolver (`RemotePolicy.resolver`).
"""

from __future__ import annotations

import copy
import io
import ipaddress
import pickle
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from modeling_e5omni import E5OmniConfig, RemoteMediaError
from modeling_e5omni.media_remote_e5omni import RemotePolicy, address_kind, fetch_remote
from tests.conftest import make_image, tiny

LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)


def _png() -> bytes:
    buffer = io.BytesIO()
    make_image(3).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()


class _Handler(BaseHTTPRequestHandler):
    log: list[tuple[str, str]] = []  # (path, Host header) of every request the server received

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _trickle(self, byte: bytes, limit: int = 60) -> None:
        try:
            for _ in range(limit):  # 30 s at most, ends as soon as the client hangs up
                self.wfile.write(byte)
                self.wfile.flush()
                time.sleep(0.5)
        except OSError:
            pass

    def do_GET(self):
        _Handler.log.append((self.path, self.headers.get("Host", "")))
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path == "/a.png":
            self._send(200, PNG)
        elif url.path == "/redirect":  # 302 to ?to=URL
            self._send(302, headers={"Location": query["to"][0]})
        elif url.path.startswith("/chain/"):  # /chain/N -> /chain/N-1 -> ... -> /chain/0 -> /a.png
            hops = int(url.path.rsplit("/", 1)[1])
            self._send(302, headers={"Location": f"/chain/{hops - 1}" if hops > 0 else "/a.png"})
        elif url.path == "/dir/relative":  # a relative Location, resolved against this URL
            self._send(307, headers={"Location": "../a.png"})
        elif url.path == "/loop":
            self._send(301, headers={"Location": "/loop"})
        elif url.path == "/no-location":
            self._send(302)
        elif url.path == "/trickle-body":  # declares 1000 bytes, sends one every 0.5 s
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.flush()
            self._trickle(b"\x89")
        elif url.path == "/trickle-headers":  # a header line that never ends, one byte every 0.5 s
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            self._trickle(b"a")
        elif url.path == "/short":  # declares 1000 bytes, sends 10, closes
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
        elif url.path == "/undeclared-big":  # no length, 3 MB
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(48):
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                pass
        else:
            self._send(404)


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def log():
    _Handler.log.clear()
    return _Handler.log


def _policy(**overrides) -> RemotePolicy:
    """Remote media on, 127.0.0.1 opted in by network (nothing else non-public), 5 s, 3 redirects, 2 MB."""
    base = dict(enabled=True, networks=LOOPBACK, timeout=5.0, max_redirects=3, max_bytes=2_000_000)
    return RemotePolicy(**{**base, **overrides})


def _refusal(url: str, policy: RemotePolicy, index: int = 0) -> RemoteMediaError:
    with pytest.raises(RemoteMediaError) as caught:
        fetch_remote(url, index, "image", policy)
    return caught.value


# ------------------------------------------------------------------------------------------------ address kinds
@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("8.8.8.8", None),
        ("2001:4860:4860::8888", None),
        ("::ffff:8.8.8.8", None),  # IPv4-mapped: judged as the IPv4 address
        ("64:ff9b::808:808", None),  # NAT64 of a public address
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback (IPv4 127.0.0.1 inside ::ffff:7f00:1)"),
        ("64:ff9b::7f00:1", "loopback (IPv4 127.0.0.1 inside 64:ff9b::7f00:1)"),
        ("2002:7f00:1::", "loopback (IPv4 127.0.0.1 inside 6to4 2002:7f00:1::)"),
        ("10.0.0.1", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd12::1", "private"),
        ("169.254.169.254", "link-local"),
        ("::ffff:169.254.169.254", "link-local (IPv4 169.254.169.254 inside ::ffff:a9fe:a9fe)"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("::ffff:0.0.0.0", "unspecified (IPv4 0.0.0.0 inside ::ffff:0:0)"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("100.64.0.1", "not globally routable"),  # carrier-grade NAT
        ("fec0::1", "site-local"),
        ("::7f00:1", "reserved"),  # IPv4-compatible (deprecated)
    ],
)
def test_address_kinds(address, kind):
    assert address_kind(address) == kind


def test_opt_ins_lift_private_kinds_but_never_unspecified_multicast_broadcast():
    default = RemotePolicy(enabled=True)
    assert default.refusal("127.0.0.1") == "loopback" and default.refusal("8.8.8.8") is None
    private = RemotePolicy(enabled=True, allow_private=True)
    for address in ("127.0.0.1", "10.0.0.1", "169.254.169.254", "::1", "::ffff:10.0.0.1"):
        assert private.refusal(address) is None, address
    for address in ("0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255"):
        assert private.refusal(address) is not None, address
    intranet = RemotePolicy(enabled=True, networks=(ipaddress.ip_network("10.20.0.0/16"),))
    assert intranet.refusal("10.20.1.2") is None
    assert intranet.refusal("::ffff:10.20.1.2") is None  # the IPv4-mapped form of an allowed address
    assert intranet.refusal("10.21.0.1") == "private"
    assert intranet.refusal("169.254.169.254") == "link-local"


# ------------------------------------------------------------------------------------------ the default refusal
@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "2130706433"])
def test_loopback_refused_by_default_without_a_request(server, log, host):
    """`localhost`, literal and numeric spellings of loopback: refused before any connection is opened."""
    err = _refusal(f"http://{host}:{server}/a.png", _policy(networks=()), index=4)
    assert err.rule == "address" and err.index == 4
    assert "loopback address" in str(err) and "allow_private_remote_media" in str(err)
    assert str(err).startswith("item 4: image URL")
    assert log == []


def test_any_non_public_address_of_a_host_refuses_it(server, log):
    """A name with a public and a private address is refused (either could be the one connected to)."""
    policy = _policy(resolver=lambda host, port: ["127.0.0.1", "10.0.0.1"])
    err = _refusal(f"http://media.test:{server}/a.png", policy)
    assert err.rule == "address"
    assert "host 'media.test' resolves to 10.0.0.1, which is a private address" in str(err)
    assert log == []


def test_the_checked_address_is_the_one_connected_to(server, log):
    """A rebinding resolver (loopback first, then 10.0.0.1) is asked once; the socket goes to what was checked, and
    the request still names the URL's host."""
    answers = iter([["127.0.0.1"], ["10.0.0.1"], ["10.0.0.1"]])
    calls = []

    def rebinding(host, port):
        calls.append((host, port))
        return next(answers)

    body = fetch_remote(f"http://media.test:{server}/a.png", 0, "image", _policy(resolver=rebinding))
    assert body == PNG
    assert calls == [("media.test", server)]
    assert log == [("/a.png", f"media.test:{server}")]


def test_an_unresolvable_host_is_a_typed_error(server, log):
    def fails(host, port):
        raise OSError("no such host")

    err = _refusal(f"http://nowhere.test:{server}/a.png", _policy(resolver=fails))
    assert err.rule == "resolve" and "cannot resolve host 'nowhere.test'" in str(err)


# -------------------------------------------------------------------------------------------------- redirects
@pytest.mark.parametrize(
    ("target", "scheme"),
    [
        ("ftp://127.0.0.1/a.png", "ftp"),
        ("file:///etc/passwd", "file"),
        ("data:image/png;base64,iVBORw0KGgo=", "data"),
        ("gopher://127.0.0.1:70/", "gopher"),
    ],
)
def test_redirects_to_other_schemes_are_refused(server, log, target, scheme):
    url = f"http://127.0.0.1:{server}/redirect?to={urllib.parse.quote(target)}"
    err = _refusal(url, _policy())
    assert err.rule == "scheme"
    assert f"(redirect 1 to {target!r}): scheme {scheme!r} is not fetched (only http and https)" in str(err)
    assert len(log) == 1


@pytest.mark.parametrize(
    ("target", "kind"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.1/a.png", "private"),
        ("http://127.0.0.2:{port}/a.png", "loopback"),  # loopback, outside the opted-in 127.0.0.1/32
        ("http://[::ffff:127.0.0.2]:{port}/a.png", "loopback address (IPv4 127.0.0.2 inside ::ffff:7f00:2)"),
        ("http://0.0.0.0:{port}/a.png", "unspecified"),
        ("https://[fe80::1]/a.png", "link-local"),
    ],
)
def test_redirects_to_non_public_addresses_are_refused(server, log, target, kind):
    """The first hop is opted in (127.0.0.1/32); where it redirects is checked again, before any connection."""
    target = target.format(port=server)
    err = _refusal(f"http://127.0.0.1:{server}/redirect?to={urllib.parse.quote(target)}", _policy())
    assert err.rule == "address"
    assert f"(redirect 1 to {target!r})" in str(err) and f"is a {kind}" in str(err)
    assert len(log) == 1  # the first hop only: nothing was sent to the redirect target


def test_redirect_to_a_name_is_resolved_and_checked(server, log):
    """A redirect to a host name goes through the same lookup and check as the first URL."""
    names = {"cdn.test": ["127.0.0.1"], "metadata.test": ["169.254.169.254"]}
    policy = _policy(resolver=lambda host, port: names[host])
    ok = f"http://127.0.0.1:{server}/redirect?to={urllib.parse.quote(f'http://cdn.test:{server}/a.png')}"
    assert fetch_remote(ok, 0, "image", policy) == PNG
    bad = f"http://127.0.0.1:{server}/redirect?to={urllib.parse.quote('http://metadata.test/x')}"
    err = _refusal(bad, policy)
    assert err.rule == "address" and "host 'metadata.test' resolves to 169.254.169.254" in str(err)


def test_redirect_count_is_bounded(server, log):
    assert fetch_remote(f"http://127.0.0.1:{server}/chain/2", 0, "image", _policy(max_redirects=3)) == PNG
    log.clear()
    err = _refusal(f"http://127.0.0.1:{server}/loop", _policy(max_redirects=3))
    assert err.rule == "redirects" and "more than max_remote_redirects=3 redirects" in str(err)
    assert len(log) == 4  # the URL and 3 redirects, then refused
    err = _refusal(f"http://127.0.0.1:{server}/chain/1", _policy(max_redirects=0))
    assert err.rule == "redirects"


def test_relative_redirects_and_missing_locations(server, log):
    assert fetch_remote(f"http://127.0.0.1:{server}/dir/relative", 0, "image", _policy()) == PNG
    assert log[-1][0] == "/a.png"
    err = _refusal(f"http://127.0.0.1:{server}/no-location", _policy())
    assert err.rule == "http" and "redirect without a Location" in str(err)


# ----------------------------------------------------------------------------------------- deadline and size
def test_a_trickling_body_is_stopped_by_the_total_deadline(server):
    start = time.monotonic()
    err = _refusal(f"http://127.0.0.1:{server}/trickle-body", _policy(timeout=1.5))
    elapsed = time.monotonic() - start
    print(f"1 byte / 0.5 s body, deadline 1.5 s: refused after {elapsed:.2f} s")
    assert err.rule == "deadline" and "remote_timeout_seconds=1.5" in str(err)
    assert 1.4 <= elapsed < 1.5 + 0.5


def test_trickling_headers_are_stopped_by_the_total_deadline(server):
    """Header lines are read several bytes per read call: only the watchdog's shutdown bounds them."""
    start = time.monotonic()
    err = _refusal(f"http://127.0.0.1:{server}/trickle-headers", _policy(timeout=1.5))
    elapsed = time.monotonic() - start
    print(f"1 byte / 0.5 s header line, deadline 1.5 s: refused after {elapsed:.2f} s")
    assert err.rule == "deadline"
    assert 1.4 <= elapsed < 1.5 + 0.5


def test_a_slow_resolver_is_stopped_by_the_deadline(server):
    def slow(host, port):
        time.sleep(3)
        return ["127.0.0.1"]

    start = time.monotonic()
    err = _refusal(f"http://slow.test:{server}/a.png", _policy(timeout=0.5, resolver=slow))
    assert err.rule == "deadline" and time.monotonic() - start < 1.0


def test_size_cap_and_short_bodies(server):
    err = _refusal(f"http://127.0.0.1:{server}/undeclared-big", _policy(max_bytes=1_000_000))
    assert err.rule == "size" and "sent more than max_remote_bytes=1000000 bytes" in str(err)
    err = _refusal(f"http://127.0.0.1:{server}/a.png", _policy(max_bytes=len(PNG) - 1))
    assert err.rule == "size" and f"declares {len(PNG)} bytes" in str(err)
    assert fetch_remote(f"http://127.0.0.1:{server}/a.png", 0, "image", _policy(max_bytes=len(PNG))) == PNG
    err = _refusal(f"http://127.0.0.1:{server}/short", _policy())
    assert err.rule == "http" and "ended after 10 of the 1000 bytes it declared" in str(err)


def test_errors_pickle_with_their_rule(server):
    err = _refusal(f"http://127.0.0.1:{server}/loop", _policy(max_redirects=0), index=7)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is RemoteMediaError and back.rule == "redirects" and back.index == 7
    assert str(back) == str(err)


# ------------------------------------------------------------------------------------------------------ config
def test_config_fields_defaults_validation_and_round_trip():
    config = E5OmniConfig()
    assert config.allow_private_remote_media is False and config.allowed_remote_networks is None
    assert config.remote_timeout_seconds == 30.0 and config.max_remote_redirects == 5
    policy = RemotePolicy.from_config(config)
    assert (policy.enabled, policy.allow_private, policy.networks, policy.timeout) == (False, False, (), 30.0)
    for bad, message in [
        ({"remote_timeout_seconds": 0}, "remote_timeout_seconds must be a positive number"),
        ({"remote_timeout_seconds": float("inf")}, "remote_timeout_seconds must be a positive number"),
        ({"max_remote_redirects": -1}, "max_remote_redirects must be an integer in"),
        ({"allowed_remote_networks": ["10.0.0.0/8", "intranet"]}, r"allowed_remote_networks\[1\] must be a network"),
    ]:
        with pytest.raises(ValueError, match=message):
            E5OmniConfig(**bad)
    saved = E5OmniConfig(
        allow_remote_media=True,
        allowed_remote_networks=["10.20.0.0/16"],
        remote_timeout_seconds=7.5,
        max_remote_redirects=2,
    ).to_dict()
    loaded = E5OmniConfig.from_dict(saved)
    policy = RemotePolicy.from_config(loaded)
    assert policy.networks == (ipaddress.ip_network("10.20.0.0/16"),)
    assert (policy.enabled, policy.timeout, policy.max_redirects) == (True, 7.5, 2)


# -------------------------------------------------------------------------------------------- through encode
@pytest.fixture
def model_with(request):
    """The shared tiny Omni model with a copy of its config changed by `set(config)` (restored afterwards)."""
    model = tiny("qwen2.5-omni")
    saved, processor_saved = model.config, model.processor.config

    def use(**fields):
        config = copy.deepcopy(saved)
        config.allow_remote_media = True
        for name, value in fields.items():
            setattr(config, name, value)
        model.config, model.processor.config = config, config
        return model

    yield use
    model.config, model.processor.config = saved, processor_saved


def test_encode_refuses_loopback_by_default_and_fetches_with_the_network_opt_in(model_with, server, log, tmp_path):
    model = model_with()
    with pytest.raises(RemoteMediaError, match=r"item 1: image URL .* is a loopback address") as caught:
        model.encode_document(["text", {"image": f"http://localhost:{server}/a.png"}])
    assert caught.value.rule == "address" and log == []
    model = model_with(allowed_remote_networks=["127.0.0.1/32"])
    (tmp_path / "a.png").write_bytes(PNG)
    remote = model.encode_document([{"image": f"http://127.0.0.1:{server}/a.png"}])
    local = model.encode_document([{"image": str(tmp_path / "a.png")}])
    assert float((remote - local).abs().max()) == 0.0
    metadata = urllib.parse.quote("http://169.254.169.254/latest/meta-data/")
    with pytest.raises(RemoteMediaError, match=r"item 2: image URL .* is a link-local address") as caught:
        model.encode_document(["a", "b", {"image": f"http://127.0.0.1:{server}/redirect?to={metadata}"}])
    assert caught.value.rule == "address"


def test_encode_deadline_comes_from_the_config(model_with, server):
    model = model_with(allow_private_remote_media=True, remote_timeout_seconds=1.0)
    start = time.monotonic()
    with pytest.raises(RemoteMediaError, match=r"item 0: video URL .* remote_timeout_seconds=1") as caught:
        model.encode_document([{"video": f"http://127.0.0.1:{server}/trickle-body"}])
    assert caught.value.rule == "deadline" and time.monotonic() - start < 1.0 + 0.5


# ----------------------------------------------------------------------------------------------------------- TLS
@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """An HTTPS server on 127.0.0.1 with a certificate for `media.test` from a CA made here (openssl CLI)."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test CA")
    folder = tmp_path_factory.mktemp("tls")

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=e5omni test CA")
    openssl("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=media.test")
    (folder / "san.ext").write_text("subjectAltName=DNS:media.test\n")
    openssl(
        "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "leaf.pem", "-days", "2", "-extfile", "san.ext",
    )  # fmt: skip
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(folder / "leaf.pem", folder / "leaf.key")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.socket = server_context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    client_context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
    yield httpd.server_address[1], client_context
    httpd.shutdown()
    httpd.server_close()


def test_https_checks_the_url_host_name_while_connecting_to_the_checked_address(tls_server, log):
    """The socket goes to the pinned 127.0.0.1, yet TLS sends and verifies the URL's name: a certificate for
    media.test passes for https://media.test, and the same server is refused for https://other.test."""
    port, context = tls_server
    policy = _policy(resolver=lambda host, port: ["127.0.0.1"], ssl_context=context)
    assert fetch_remote(f"https://media.test:{port}/a.png", 0, "image", policy) == PNG
    assert log == [("/a.png", f"media.test:{port}")]
    err = _refusal(f"https://other.test:{port}/a.png", policy)
    assert err.rule == "tls" and "CERTIFICATE_VERIFY_FAILED" in str(err)
    assert len(log) == 1


def test_worker_processes_apply_the_policy_and_return_the_rule(model_with, server, log):
    """encode(num_workers=1) decodes in a DataLoader worker: the config travels, the refusal comes back whole."""
    model = model_with(allowed_remote_networks=["127.0.0.1/32"])
    remote = model.encode_document([{"image": f"http://127.0.0.1:{server}/a.png"}], num_workers=1)
    assert remote.shape[0] == 1 and log == [("/a.png", f"127.0.0.1:{server}")]
    with pytest.raises(RemoteMediaError, match=r"item 1: image URL .* is a loopback address") as caught:
        model.encode_document(["x", {"image": f"http://127.0.0.2:{server}/a.png"}], num_workers=1)
    assert caught.value.rule == "address" and caught.value.index == 1
