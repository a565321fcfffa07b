"""The worker client over `https://`: a real TLS server on 127.0.0.1 with certificates made here
(a CA and a server certificate, by the `cryptography` package). A request reaches it over TLS;
an untrusted certificate or a wrong host name is refused with an `UpstreamError`."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pdserve.actuators.base import ReplicaHandle
from pdserve.gateway.upstream import Upstream, UpstreamError, chunks
from pdserve.pools.replica import Replica
from pdserve.pools.scraper import probe

pytestmark = pytest.mark.unit

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
TIMEOUT_S = 10.0


@dataclass
class Certificates:
    ca: Path  # PEM of the CA that signed the server's certificate
    cert: Path
    key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey],
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0])
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def make_certificates(directory: Path, names: list[x509.GeneralName]) -> Certificates:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        _issue("pdserve test CA", ca_key, (_name("pdserve test CA"), ca_key))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(*[False] * 5, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _issue("worker", key, (ca.subject, ca_key))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = Certificates(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


class TlsServer:
    """An HTTP/1.1 server behind TLS whose answers the test scripts; it notes what it saw."""

    def __init__(self, certificates: Certificates, handler: Handler) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(certificates.cert, certificates.key)
        self.handler = handler
        self.requests: list[bytes] = []
        self.tls_versions: list[str] = []
        self._open: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}

    async def __aenter__(self) -> TlsServer:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.tls_versions.append(writer.get_extra_info("ssl_object").version())
            self._open[writer] = asyncio.current_task()  # type: ignore[assignment]
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
                pass
            finally:
                writer.close()
                self._open.pop(writer, None)

        self._server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        handlers = list(self._open.values())
        for writer in list(self._open):
            writer.transport.abort()  # the handlers read EOF and end
        await asyncio.gather(*handlers, return_exceptions=True)

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        lengths = [
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ]
        body = await reader.readexactly(lengths[0] if lengths else 0)
        self.requests.append(head + body)
        return body


def _answer(body: bytes, content_type: str = "application/json") -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return f"{head}\r\n".encode() + body


async def echo(server: TlsServer, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while True:
        body = await server.read_request(reader)
        w.write(_answer(body))
        await w.drain()


@pytest.fixture()
def certificates(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])


def trusting(certificates: Certificates) -> Upstream:
    """A worker client that trusts the test's CA (made inside each test: its connections belong
    to the test's event loop)."""
    return Upstream(tls=ssl.create_default_context(cafile=certificates.ca))


async def test_a_request_reaches_an_https_worker_over_tls(certificates: Certificates) -> None:
    server = TlsServer(certificates, lambda r, w: echo(server, r, w))
    async with server, trusting(certificates) as client:
        body = {"model": "tiny", "prompt": "hi"}
        status, content = await client.post_json(
            f"{server.url}/v1/completions", body, {"x-request-id": "r1"}, TIMEOUT_S
        )
        again, _ = await client.post_json(f"{server.url}/v1/completions", body, {}, TIMEOUT_S)
    assert (status, json.loads(content), again) == (200, body, 200)
    assert server.tls_versions == ["TLSv1.3"]  # one TLS connection, kept alive for the second
    head = server.requests[0].split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"post /v1/completions http/1.1")
    assert b"content-type: application/json" in head and b"x-request-id: r1" in head


async def test_an_untrusted_certificate_is_refused(certificates: Certificates) -> None:
    server = TlsServer(certificates, lambda r, w: echo(server, r, w))
    async with server, Upstream() as default_trust:  # the system's CAs: not this test's CA
        with pytest.raises(UpstreamError, match="CERTIFICATE_VERIFY_FAILED"):
            await default_trust.post_json(f"{server.url}/v1/completions", {}, {}, TIMEOUT_S)
    assert server.requests == []  # nothing was sent to it


async def test_a_certificate_for_another_host_is_refused(tmp_path: Path) -> None:
    other = make_certificates(tmp_path, [x509.DNSName("worker.example")])
    server = TlsServer(other, lambda r, w: echo(server, r, w))
    async with server, Upstream(tls=ssl.create_default_context(cafile=other.ca)) as client:
        with pytest.raises(UpstreamError, match="IP address mismatch"):
            await client.get(f"{server.url}/health", TIMEOUT_S)
    assert server.requests == []


async def test_a_stream_arrives_in_pieces_and_a_silent_worker_times_out(
    certificates: Certificates,
) -> None:
    go_on = asyncio.Event()

    async def stream(reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        w.write(b"Transfer-Encoding: chunked\r\n\r\n6\r\ndata 1\r\n")
        await w.drain()
        await go_on.wait()
        w.write(b"6\r\ndata 2\r\n")  # then nothing: the answer never completes
        await w.drain()
        await reader.read()  # until the client or the test closes the connection

    server = TlsServer(certificates, stream)
    async with server, trusting(certificates) as client:
        response = await client.open(f"{server.url}/v1/completions", {}, {}, timeout_s=1.0)
        assert (response.status, response.content_type) == (200, "text/event-stream")
        pieces = chunks(response)
        assert await anext(pieces) == b"data 1"
        go_on.set()
        assert await anext(pieces) == b"data 2"
        with pytest.raises(UpstreamError, match="in time"):
            await anext(pieces)
        response.release()


async def test_probes_reach_an_https_worker(certificates: Certificates) -> None:
    async def worker(reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            path = server.requests[-1].split(b" ", 2)[1]
            text = b'vllm:num_requests_running{engine="0"} 3.0\n'
            w.write(_answer(b"" if path == b"/health" else text, "text/plain"))
            await w.drain()

    server = TlsServer(certificates, worker)
    async with server, trusting(certificates) as client:
        replica = Replica(handle=ReplicaHandle("r1", "decode", server.url))
        assert await probe(client, replica)
    assert replica.running == 3


async def test_a_url_of_another_scheme_is_an_upstream_error(certificates: Certificates) -> None:
    async with trusting(certificates) as client:
        with pytest.raises(UpstreamError, match="http:// or https://"):
            await client.get("ftp://127.0.0.1:1/health", TIMEOUT_S)
