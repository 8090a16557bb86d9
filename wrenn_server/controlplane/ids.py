"""The public ID scheme: UUIDs inside, `<prefix><25-char base36>` on the wire; API key material."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from enum import Enum

from .errors import InvalidRequest

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_ID_LEN = 25
ZERO_UUID = uuid.UUID(int=0)


class Kind(Enum):
    """What an ID names: its wire prefix and the word used in error messages."""

    SANDBOX = ("cl-", "sandbox")
    USER = ("usr-", "user")
    TEAM = ("team-", "team")
    API_KEY = ("key-", "API key")
    HOST = ("host-", "host")
    HOST_TOKEN = ("htok-", "host token")
    REFRESH_TOKEN = ("hrt-", "refresh token")
    AUDIT_LOG = ("log-", "audit log")
    BUILD = ("bld-", "build")
    PERMISSION = ("perm-", "admin permission")
    CHANNEL = ("ch-", "channel")
    VOLUME = ("vol-", "volume")

    @property
    def prefix(self) -> str:
        return self.value[0]

    @property
    def noun(self) -> str:
        return self.value[1]


def base36(value: int) -> str:
    digits = []
    while value:
        value, rem = divmod(value, 36)
        digits.append(_ALPHABET[rem])
    return "".join(reversed(digits)).rjust(_ID_LEN, "0")


def format_id(kind: Kind, value: uuid.UUID) -> str:
    return kind.prefix + base36(value.int)


def parse_id(kind: Kind, text: str) -> uuid.UUID:
    """The UUID behind a wire ID; anything malformed is a 400 `invalid_request`."""
    error = InvalidRequest(f"invalid {kind.noun} ID")
    if not text.startswith(kind.prefix):
        raise error
    body = text[len(kind.prefix) :]
    if len(body) != _ID_LEN or any(ch not in _ALPHABET for ch in body):
        raise error
    number = int(body, 36)
    if number >= 1 << 128:
        raise error
    return uuid.UUID(int=number)


def new_uuid() -> uuid.UUID:
    return uuid.uuid4()


def new_api_key() -> str:
    """A fresh plaintext API key: `wrn_` + 32 hex characters."""
    return "wrn_" + secrets.token_hex(16)


def is_api_key_format(text: str) -> bool:
    body = text[4:]
    return text.startswith("wrn_") and len(body) == 32 and all(ch in "0123456789abcdef" for ch in body)


RPC_SEED = "seed:"


def new_rpc_seed() -> str:
    return RPC_SEED + secrets.token_hex(32)


def agent_rpc_token(secret: str, host_id: uuid.UUID, stored: str) -> str:
    """The token the control plane presents to a host's agent. The database keeps only a seed, from which the
    token is derived with the control plane's secret (HMAC-SHA256): a copy of the database cannot call an
    agent. A value stored before seeds (no prefix) is the token itself, until the host's next refresh."""
    if not stored.startswith(RPC_SEED):
        return stored
    message = f"wrenn-agent-rpc:{host_id}:{stored.removeprefix(RPC_SEED)}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def hash_secret(plaintext: str) -> str:
    """sha256 hex, how API keys, registration and refresh tokens are stored."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


def key_prefix(plaintext: str) -> str:
    return plaintext[:10]


def new_token() -> str:
    """A 64-hex one-time token (host registration, refresh)."""
    return secrets.token_hex(32)


def short_tag(prefix: str) -> str:
    """`<prefix>-<8 hex>`, e.g. the default background process tag `proc-1a2b3c4d`."""
    return f"{prefix}-{secrets.token_hex(4)}"
