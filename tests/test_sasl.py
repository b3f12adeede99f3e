"""The CLI's own SASL login (`planshift.kafka.sasl`) against RFC 7677's SCRAM-SHA-256
example, byte for byte; the real broker's answers are in tests/test_security.py."""

from __future__ import annotations

import struct

import pytest

from planshift.kafka import sasl

# RFC 7677 §3: user "user", password "pencil"
CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
SERVER_FIRST = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
CLIENT_FINAL = ("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
SERVER_FINAL = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


class ScriptedBroker:
    """A socket whose far end answers each SaslAuthenticate with the next scripted reply
    and records the token it was sent (Kafka framing: size, header v1 in, v0 out)."""

    def __init__(self, replies: list[tuple[int, str | None, bytes]]) -> None:
        self.replies, self.tokens, self.pending = list(replies), [], b""

    def sendall(self, frame: bytes) -> None:
        api_key, _, correlation_id, client_id_length = struct.unpack_from(">hhih", frame, 4)
        body = frame[4 + 10 + client_id_length:]
        assert api_key == sasl.SASL_AUTHENTICATE
        self.tokens.append(body[4:4 + struct.unpack_from(">i", body)[0]].decode())
        error, message, token = self.replies.pop(0)
        text = b"\xff\xff" if message is None else struct.pack(">h", len(message)) + message.encode()
        answer = struct.pack(">ih", correlation_id, error) + text + struct.pack(">i", len(token)) + token
        self.pending += struct.pack(">i", len(answer)) + answer

    def recv(self, n: int) -> bytes:
        chunk, self.pending = self.pending[:1], self.pending[1:]  # a byte at a time: reads must reassemble
        return chunk


def test_the_scram_exchange_is_rfc_7677s_own():
    broker = ScriptedBroker([(0, None, SERVER_FIRST.encode()), (0, None, SERVER_FINAL.encode())])
    verdict = sasl._Exchange(broker).scram("sha256", "user", "pencil", nonce=CLIENT_NONCE)
    assert verdict == sasl.Verdict(True)
    assert broker.tokens == [f"n,,n=user,r={CLIENT_NONCE}", CLIENT_FINAL]


def test_a_wrong_password_is_the_brokers_refusal_and_a_forged_signature_is_not_trusted():
    refused = ScriptedBroker([(0, None, SERVER_FIRST.encode()),
                              (sasl.SASL_AUTHENTICATION_FAILED, "Authentication failed: invalid credentials", b"")])
    verdict = sasl._Exchange(refused).scram("sha256", "user", "not-pencil", nonce=CLIENT_NONCE)
    assert verdict == sasl.Verdict(False, "Authentication failed: invalid credentials")
    assert refused.tokens[1] != CLIENT_FINAL  # another password, another proof
    forged = ScriptedBroker([(0, None, SERVER_FIRST.encode()), (0, None, b"v=" + b"A" * 44)])
    with pytest.raises(ValueError, match="signature"):
        sasl._Exchange(forged).scram("sha256", "user", "pencil", nonce=CLIENT_NONCE)


def test_a_name_with_a_comma_or_equals_sign_is_escaped():
    broker = ScriptedBroker([(sasl.SASL_AUTHENTICATION_FAILED, "no", b"")])
    sasl._Exchange(broker).scram("sha512", "a=b,c", "pw", nonce="n0")
    assert broker.tokens == ["n,,n=a=3Db=2Cc,r=n0"]


def test_nothing_to_connect_to_is_no_verdict():
    from planshift.ops.broker import free_port

    from planshift.settings import Settings

    settings = Settings.from_env({}).with_(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
                                sasl_username="u", sasl_password="p")
    assert sasl.login(settings, "127.0.0.1", free_port(), timeout=1) is None
    assert sasl.login(settings, "127.0.0.1", free_port(), mechanism="GSSAPI", timeout=1) is None
