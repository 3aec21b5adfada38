"""TLS 1.3 on real TCP links, the server authenticated by the Ed25519 key it announced.

A server's announcement (a relay's signed contact, a node's registry listing) already
carries its Ed25519 public key, signed. So no CA is needed: the server presents a
self-signed X.509 certificate whose subject public key *is* that key, and the client, which
learnt the key from the announcement, accepts the connection only if the certificate names
exactly that key. TLS itself proves the server holds the matching secret (the handshake's
CertificateVerify is signed with it), so a pin on the certificate's key is a pin on the
peer. The certificate's other fields (name, validity) mean nothing and are not checked.

A pinned address is ``host:port#<64 hex digits of the key>``: the key travels with the
address wherever the address goes (network.json, ``ready`` lines, contacts), so a caller
never needs a second argument to connect safely.

Certificates are made once per key per process (Ed25519 signing is cheap, but building
an ``SSLContext`` from files is not); the key file lives only for the moment OpenSSL reads
it, in a private temporary directory, mode 0600.
"""

from __future__ import annotations

import datetime
import functools
import hmac
import os
import ssl
import tempfile
from pathlib import Path

import trio

# ``cryptography`` (x509 alone is 20 ms to import) is imported where a certificate is made
# or read, not here: every process that imports the overlay, the CLI's included, would
# pay for it, and most never make a TLS connection.

#: How long a peer may take to finish its TLS handshake before the link is dropped (a
#: silent socket must not hold a server task forever).
HANDSHAKE_TIMEOUT_S = 10.0
#: Certificate validity: long, since nothing checks it; the announcement's own expiry is
#: what bounds a key's life.
_CERT_VALID = datetime.timedelta(days=3650)


class PeerKeyMismatch(Exception):
    """The server's certificate does not carry the key its announcement named."""


@functools.cache
def server_context(seed: bytes) -> ssl.SSLContext:
    """The TLS 1.3 server context presenting the Ed25519 key of ``seed`` (made once per
    key). A seed, not a key object, so overlay key pairs and p2psync identities alike
    (both one 32-byte Ed25519 seed) serve with it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.x509.oid import NameOID

    private = Ed25519PrivateKey.from_private_bytes(seed)
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, public.hex())])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + _CERT_VALID)
        .sign(private, algorithm=None)
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    with tempfile.TemporaryDirectory() as directory:
        cert_file, key_file = Path(directory, "cert.pem"), Path(directory, "key.pem")
        cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(
                private.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        context.load_cert_chain(cert_file, key_file)
    return context


@functools.cache
def client_context() -> ssl.SSLContext:
    """TLS 1.3 without CA or host name checks: the pin on the key replaces both."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def accept_tls(stream: trio.abc.Stream, seed: bytes) -> trio.SSLStream[trio.abc.Stream]:
    """The server side: handshake within :data:`HANDSHAKE_TIMEOUT_S`, else ``TooSlowError``."""
    tls = trio.SSLStream(stream, server_context(seed), server_side=True)
    with trio.fail_after(HANDSHAKE_TIMEOUT_S):
        await tls.do_handshake()
    return tls


async def connect_tls(stream: trio.abc.Stream, pin: bytes) -> trio.SSLStream[trio.abc.Stream]:
    """The client side: handshake, then accept only a certificate carrying ``pin``.

    On a mismatch the stream is closed and :class:`PeerKeyMismatch` raised, before a
    single application byte is sent."""
    tls = trio.SSLStream(stream, client_context(), server_side=False)
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT_S):
            await tls.do_handshake()
        presented = _certificate_key(tls.getpeercert(binary_form=True))
        if presented is None or not hmac.compare_digest(presented, pin):
            shown = presented.hex() if presented is not None else "no Ed25519 key"
            raise PeerKeyMismatch(f"the server presented {shown}, expected {pin.hex()}")
    except BaseException:
        await trio.aclose_forcefully(tls)
        raise
    return tls


def _certificate_key(der: bytes | None) -> bytes | None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if der is None:
        return None
    key = x509.load_der_x509_certificate(der).public_key()
    if not isinstance(key, Ed25519PublicKey):
        return None
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
