"""A TLS front for the machine's PostgreSQL, which itself speaks no TLS.

`tls_postgres` starts, on a free loopback port, a server that answers PostgreSQL's
SSLRequest with "S", completes the TLS handshake with a certificate for `SERVER_NAME`
signed by a CA made for the occasion, then relays the bytes to the real server (a client
that asks for no TLS is relayed as it is). Clients reach it as
``postgresql://...@SERVER_NAME:<port>/db?hostaddr=127.0.0.1``: libpq connects to the
address and verifies the certificate against the name, as it would for a remote database.
With `client_certs`, the server refuses a client without a certificate from the same CA.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import secrets
import ssl
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.services import PG_HOST, PG_PORT, free_port

SERVER_NAME = "db.example.internal"
_SSL_REQUEST = 80877103
_GSS_REQUEST = 80877104


@dataclass(frozen=True)
class TlsPostgres:
    port: int
    ca: Path  # the CA file that signed the server's (and the client's) certificate
    client_cert: Path
    client_key: Path

    def url(self, database_url: str, query: str = "") -> str:
        """`database_url` (of the machine's server) pointed at this front by name."""
        database = database_url.rsplit("/", 1)[1]
        user = database_url.split("://", 1)[1].split("@", 1)[0]
        extra = f"&{query}" if query else ""
        return (
            f"postgresql+psycopg://{user}@{SERVER_NAME}:{self.port}/{database}"
            f"?hostaddr=127.0.0.1{extra}"
        )


@contextmanager
def tls_postgres(folder: Path, *, client_certs: bool = False) -> Iterator[TlsPostgres]:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca()
    server = _signed(ca_key, ca_cert, SERVER_NAME, folder / "server")
    client = _signed(ca_key, ca_cert, "gdpr-client", folder / "client")
    ca_path = folder / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*server)
    if client_certs:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(ca_path))
    port = free_port()
    front = _Front(context)
    thread = threading.Thread(target=front.serve, args=(port,), name="tls-postgres", daemon=True)
    thread.start()
    front.started.wait(10)
    try:
        yield TlsPostgres(port, ca_path, *client)
    finally:
        front.stop()
        thread.join(10)


class _Front:
    """The relay's event loop, on its own thread; `stop` closes every connection it holds."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    def serve(self, port: int) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", port))
        self.started.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()
            self.loop.run_until_complete(server.wait_closed())
            self.loop.close()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close_all(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)

    async def _close_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for writer in list(self.writers):
            writer.transport.abort()
        await asyncio.sleep(0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)  # type: ignore[arg-type]
        self.writers.add(writer)
        try:
            with suppress(OSError, asyncio.IncompleteReadError, ssl.SSLError, ConnectionError):
                await self._relay(reader, writer)
        finally:
            writer.transport.abort()
            self.writers.discard(writer)
            self.tasks.discard(task)  # type: ignore[arg-type]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.readexactly(8)
        length, code = struct.unpack("!II", first)
        if length == 8 and code == _GSS_REQUEST:
            writer.write(b"N")
            await writer.drain()
            first = await reader.readexactly(8)
            length, code = struct.unpack("!II", first)
        if length == 8 and code == _SSL_REQUEST:
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(self.context)
            first = b""
        up_reader, up_writer = await asyncio.open_connection(PG_HOST, PG_PORT)
        self.writers.add(up_writer)
        up_writer.write(first)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.transport.abort()
            self.writers.discard(up_writer)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


def _ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    label = f"gdpr test CA {secrets.token_hex(4)}"  # each front's CA is another CA
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)])
    cert = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _signed(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, name: str, stem: Path
) -> tuple[Path, Path]:
    """A certificate for `name` signed by the CA, written as `<stem>.crt` and `<stem>.key`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    alt = x509.SubjectAlternativeName(
        [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        _builder(subject, ca_cert.subject, key.public_key())
        .add_extension(alt, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = stem.with_suffix(".crt"), stem.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)  # libpq refuses a client key others can read
    return cert_path, key_path


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
