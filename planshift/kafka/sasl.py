"""Does the broker take these credentials? One SASL exchange, spoken here, for the CLI's
one-line diagnosis (`clients.require_broker`).

kafka-python cannot be asked: it logs a refused login and retries its bootstrap until
its timeout (5 s of the CLI's time for every refusal), and 3.0.x lost the broker's answer
altogether whenever the broker's close came in the same read as its SaslAuthenticate
error: the login seemed to have failed on a network error, so a rotated password could
not be told from a broker that went away (on most attempts on a loaded machine; fixed
since for planshift's clients by `fastpath.install_eof_fix`, which CI's failure led to).

So the exchange is made here, over a plain blocking socket (TLS when the protocol says
so), with the Kafka protocol's own framing (SaslHandshake v1, SaslAuthenticate v1), for
SCRAM-SHA-512 (the one docs/SECURITY.md sets up), SCRAM-SHA-256 (RFC 5802, RFC 7677)
and PLAIN (RFC 4616). The answer is one of three: accepted, refused with the broker's
reason, or `None` when the exchange could not be completed (the caller then asks
kafka-python, as before).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import socket
import ssl
import struct
from dataclasses import dataclass

from planshift.settings import Settings

SASL_HANDSHAKE, SASL_AUTHENTICATE = 17, 36
SASL_AUTHENTICATION_FAILED, UNSUPPORTED_SASL_MECHANISM = 58, 33
SCRAM_HASHES = {"SCRAM-SHA-512": "sha512", "SCRAM-SHA-256": "sha256"}
MECHANISMS = (*SCRAM_HASHES, "PLAIN")


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str = ""  # the broker's words when it refused
    offered: tuple[str, ...] | None = None  # the broker's mechanisms, when it does not offer the one asked for


class _Closed(Exception):
    """The broker closed the connection, or did not answer in time, mid-exchange."""


def login(settings: Settings, host: str, port: int, *, timeout: float, username: str | None = None,
          password: str | None = None, mechanism: str | None = None) -> Verdict | None:
    """Log in once at `host:port` with `settings`' security (TLS for SASL_SSL, its CA file),
    as its user or as `username`; `None` when the exchange could not be completed."""
    mechanism = mechanism or settings.sasl_mechanism
    if mechanism not in MECHANISMS:
        return None
    username = settings.sasl_username or "" if username is None else username
    password = settings.sasl_password or "" if password is None else password
    try:
        with _connect(host, port, settings.security_protocol == "SASL_SSL", settings.ssl_cafile, timeout) as sock:
            return _Exchange(sock).login(mechanism, username, password)
    except (OSError, _Closed, ValueError, KeyError, struct.error):  # (ssl.SSLError is an OSError)
        return None


def _connect(host: str, port: int, use_tls: bool, cafile: str | None, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    if not use_tls:
        return sock
    try:
        return ssl.create_default_context(cafile=cafile).wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


class _Exchange:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.correlation_id = 0

    def login(self, mechanism: str, username: str, password: str) -> Verdict:
        error, offered = self.handshake(mechanism)
        if error == UNSUPPORTED_SASL_MECHANISM:
            return Verdict(False, f"the broker does not offer {mechanism}", tuple(offered))
        if error:
            return Verdict(False, f"SaslHandshake error {error}")
        if mechanism == "PLAIN":
            return self.plain(username, password)
        return self.scram(SCRAM_HASHES[mechanism], username, password)

    def plain(self, username: str, password: str) -> Verdict:
        error, message, _ = self.authenticate(f"\0{username}\0{password}".encode())
        return Verdict(not error, message or "")

    def scram(self, hash_name: str, username: str, password: str, nonce: str | None = None) -> Verdict:
        nonce = nonce or secrets.token_urlsafe(24)
        name = username.replace("=", "=3D").replace(",", "=2C")
        client_first = f"n={name},r={nonce}"
        error, message, answer = self.authenticate(f"n,,{client_first}".encode())
        if error:
            return Verdict(False, message or "")
        server_first = answer.decode()
        fields = dict(part.split("=", 1) for part in server_first.split(","))
        if not fields["r"].startswith(nonce):
            raise ValueError("the broker's SCRAM nonce does not extend ours")
        salted = hashlib.pbkdf2_hmac(hash_name, password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
        client_key = hmac.digest(salted, b"Client Key", hash_name)
        without_proof = f"c=biws,r={fields['r']}"
        auth_message = f"{client_first},{server_first},{without_proof}".encode()
        signature = hmac.digest(hashlib.new(hash_name, client_key).digest(), auth_message, hash_name)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        error, message, answer = self.authenticate(f"{without_proof},p={base64.b64encode(proof).decode()}".encode())
        if error:
            return Verdict(False, message or "")
        server_key = hmac.digest(salted, b"Server Key", hash_name)
        expected = base64.b64encode(hmac.digest(server_key, auth_message, hash_name)).decode()
        if answer.decode() != f"v={expected}":
            raise ValueError("the broker's SCRAM signature does not verify")
        return Verdict(True)

    # -- the Kafka protocol: request header v1, response header v0, both APIs non-flexible --
    def request(self, api_key: int, body: bytes) -> bytes:
        self.correlation_id += 1
        client_id = b"planshift-probe"
        header = struct.pack(">hhih", api_key, 1, self.correlation_id, len(client_id)) + client_id
        self.sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
        size = struct.unpack(">i", self.read(4))[0]
        response = self.read(size)
        if struct.unpack(">i", response[:4])[0] != self.correlation_id:
            raise ValueError("the broker answered another request")
        return response[4:]

    def read(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = self.sock.recv(left)
            if not chunk:
                raise _Closed()
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def handshake(self, mechanism: str) -> tuple[int, list[str]]:
        answer = _Reader(self.request(SASL_HANDSHAKE, _string(mechanism)))
        error = answer.int16()
        return error, [answer.string() or "" for _ in range(answer.int32())]

    def authenticate(self, token: bytes) -> tuple[int, str | None, bytes]:
        answer = _Reader(self.request(SASL_AUTHENTICATE, struct.pack(">i", len(token)) + token))
        return answer.int16(), answer.string(), answer.bytes()


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return value

    def int16(self) -> int:
        return self.take(">h")

    def int32(self) -> int:
        return self.take(">i")

    def string(self) -> str | None:
        n = self.int16()
        if n < 0:
            return None
        self.at += n
        return self.data[self.at - n:self.at].decode()

    def bytes(self) -> bytes:
        n = self.int32()
        self.at += max(n, 0)
        return self.data[self.at - max(n, 0):self.at]
