"""The broker's stand-in for Google's push tokens: RS256 JWTs and the certificates to check them.

Each push to a subscription with ``pushConfig.oidcToken`` carries ``Authorization: Bearer <JWT>``
with the claims Google puts in a push token (``iss``, ``aud``, ``azp``, ``sub``, ``email``,
``email_verified``, ``iat``, ``exp``) and a ``kid`` header. The certificates are served in the
format of ``https://www.googleapis.com/oauth2/v1/certs`` (key id -> PEM certificate), so the
service's production verifier checks them once ``HOMING_OIDC_CERTS_URL`` points at the broker.

The key is kept in the broker's storage, so tokens stay valid across a restart. Signing is
google-auth's (``google.auth.jwt.encode``) over ``cryptography``.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

ISSUER = "https://accounts.google.com"
TOKEN_LIFETIME = 3600


def new_private_key() -> bytes:
    """A fresh RSA key as PKCS#8 PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_certificate(private_key_pem: bytes) -> bytes:
    """A self-signed certificate (PEM) for the key, valid for ten years."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError("the broker's token key must be an RSA key")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "homing local broker")])
    start = datetime.now(UTC) - timedelta(days=1)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


class TokenIssuer:
    """Signs push tokens with one RSA key and publishes its certificate.

    Args:
        private_key_pem: the RSA key (:func:`new_private_key`).
        certificate_pem: its certificate (:func:`make_certificate`); made when not given.
    """

    def __init__(self, private_key_pem: bytes, certificate_pem: bytes | None = None) -> None:
        pem = certificate_pem or make_certificate(private_key_pem)
        certificate = x509.load_pem_x509_certificate(pem)
        der = certificate.public_bytes(serialization.Encoding.DER)
        self.key_id = hashlib.sha1(der, usedforsecurity=False).hexdigest()
        self._pem = pem.decode()
        self._signer = crypt.RSASigner.from_string(  # type: ignore[no-untyped-call]
            private_key_pem, key_id=self.key_id
        )

    def certs(self) -> dict[str, str]:
        """The certificates, as Google's v1 certs endpoint serves them."""
        return {self.key_id: self._pem}

    def token(self, service_account_email: str, audience: str, *, now: float | None = None) -> str:
        """A push token for ``service_account_email``, addressed to ``audience``."""
        issued = int(time.time() if now is None else now)
        subject = subject_of(service_account_email)
        claims = {
            "iss": ISSUER,
            "aud": audience,
            "azp": subject,
            "sub": subject,
            "email": service_account_email,
            "email_verified": True,
            "iat": issued,
            "exp": issued + TOKEN_LIFETIME,
        }
        token: bytes = jwt.encode(self._signer, claims)  # type: ignore[no-untyped-call]
        return token.decode("ascii")


def subject_of(email: str) -> str:
    """A stable numeric id for a service account, shaped like Google's 21-digit ``sub``."""
    digest = int.from_bytes(hashlib.sha256(email.encode()).digest()[:9], "big")
    return "1" + str(digest).zfill(20)[:20]
