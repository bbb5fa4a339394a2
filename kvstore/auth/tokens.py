"""Auth tokens, as etcd's ``--auth-token``: ``simple`` (the default) or ``jwt``.

A *simple* token is ``<16 random letters>.<raft index>``: the member that
takes the login picks the letters, and every member records the token when
it applies the login entry, so all of them know it. A member that has not
applied that index yet waits for it (``index_of``) before judging the token.
Each member forgets a token ``ttl`` seconds after its last use.

A *JWT* is signed with ``priv-key`` (or checked only, with ``pub-key``) and
carries the user and the auth revision it was issued at; any member verifies
it alone, and a change of the auth store makes older tokens stale.
"""

from __future__ import annotations

import logging
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt

log = logging.getLogger(__name__)

DEFAULT_SIMPLE_TTL = 300.0
"""etcd's --auth-token-ttl default, seconds."""
DEFAULT_JWT_TTL = 300.0
"""etcd's JWT ttl default (5m)."""
SIMPLE_PREFIX_LEN = 16
MAX_SIMPLE_TOKENS = 1_000_000
"""Bound on live simple tokens of one member; past it the oldest are dropped."""
SWEEP_INTERVAL = 1.0
"""Seconds between sweeps of expired simple tokens (etcd's TTL resolution)."""
_LETTERS = string.ascii_letters


class TokenOptionError(ValueError):
    """A malformed ``--auth-token`` value: the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class TokenInfo:
    username: str
    revision: int
    """JWT: the auth revision at login; simple tokens: 0 (the store's current one applies)."""


class TokenProvider(Protocol):
    def new_prefix(self) -> str:
        """Chosen by the member taking a login, before it proposes the login."""
        ...

    def assign(self, username: str, revision: int, prefix: str, index: int) -> str:
        """The token of a login applied at raft ``index`` (on every member)."""
        ...

    def info(self, token: str) -> TokenInfo | None:
        """Who the token names, or None if this member does not accept it."""
        ...

    def index_of(self, token: str) -> int:
        """The raft index a member must have applied to judge ``token`` (0: none)."""
        ...

    def invalidate_user(self, username: str) -> None: ...

    def enable(self) -> None: ...

    def disable(self) -> None: ...


class SimpleTokens:
    """etcd's simple tokens: opaque, held in memory by every member, expiring when unused."""

    def __init__(
        self, ttl: float = DEFAULT_SIMPLE_TTL, clock: Callable[[], float] = time.monotonic
    ):
        self.ttl = ttl if ttl > 0 else DEFAULT_SIMPLE_TTL
        self._clock = clock
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (user, expires at)
        self._enabled = False
        self._next_sweep = 0.0

    def new_prefix(self) -> str:
        return "".join(secrets.choice(_LETTERS) for _ in range(SIMPLE_PREFIX_LEN))

    def assign(self, username: str, revision: int, prefix: str, index: int) -> str:
        token = f"{prefix}.{index}"
        if not self._enabled:
            return token
        now = self._clock()
        self._sweep(now)
        if len(self._tokens) >= MAX_SIMPLE_TOKENS:
            oldest = min(self._tokens, key=lambda t: self._tokens[t][1])
            del self._tokens[oldest]
        self._tokens[token] = (username, now + self.ttl)
        return token

    def index_of(self, token: str) -> int:
        _, _, index = token.rpartition(".")
        return int(index) if index.isdigit() else 0

    def info(self, token: str) -> TokenInfo | None:
        entry = self._tokens.get(token)
        if entry is None:
            return None
        now = self._clock()
        username, expires = entry
        if now > expires:
            del self._tokens[token]
            return None
        self._tokens[token] = (username, now + self.ttl)  # refreshed on use
        return TokenInfo(username, 0)

    def invalidate_user(self, username: str) -> None:
        for token in [t for t, (user, _) in self._tokens.items() if user == username]:
            del self._tokens[token]

    def enable(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False
        self._tokens.clear()

    def __len__(self) -> int:
        return len(self._tokens)

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_INTERVAL
        for token in [t for t, (_, expires) in self._tokens.items() if now > expires]:
            del self._tokens[token]


_JWT_METHODS = {
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "HS256",
    "HS384",
    "HS512",
}


class JWTTokens:
    """Signed tokens with the user and the auth revision; verified by any member alone."""

    def __init__(
        self,
        sign_method: str,
        *,
        private_key: bytes | None = None,
        public_key: bytes | None = None,
        ttl: float = DEFAULT_JWT_TTL,
    ) -> None:
        if sign_method not in _JWT_METHODS:
            raise TokenOptionError(f"unsupported JWT sign-method {sign_method!r}")
        self.sign_method = sign_method
        self.ttl = ttl
        self._signing_key: Any = None
        self._verifying_key: Any
        if sign_method.startswith("HS"):
            secret = private_key or public_key
            if not secret:
                raise TokenOptionError("JWT sign-method HS* needs priv-key (the shared secret)")
            self._signing_key = self._verifying_key = secret
            return
        try:
            if private_key:
                from cryptography.hazmat.primitives.serialization import load_pem_private_key

                key = load_pem_private_key(private_key, password=None)
                self._signing_key = key
                self._verifying_key = key.public_key()
            elif public_key:
                from cryptography.hazmat.primitives.serialization import load_pem_public_key

                self._verifying_key = load_pem_public_key(public_key)
            else:
                raise TokenOptionError("JWT needs priv-key or pub-key")
        except ValueError as exc:
            if isinstance(exc, TokenOptionError):
                raise
            raise TokenOptionError(f"JWT key does not load: {exc}") from None

    def new_prefix(self) -> str:
        return ""

    def assign(self, username: str, revision: int, prefix: str, index: int) -> str:
        if self._signing_key is None:
            log.warning("JWT login refused: this member has only a public key (verify only)")
            return ""
        claims = {"username": username, "revision": revision, "exp": int(time.time() + self.ttl)}
        return jwt.encode(claims, self._signing_key, algorithm=self.sign_method)

    def index_of(self, token: str) -> int:
        return 0

    def info(self, token: str) -> TokenInfo | None:
        try:
            claims = jwt.decode(token, self._verifying_key, algorithms=[self.sign_method])
        except jwt.PyJWTError as exc:
            log.info("refused a JWT: %s", exc)
            return None
        username = claims.get("username")
        revision = claims.get("revision")
        if not isinstance(username, str) or not isinstance(revision, int | float):
            return None
        return TokenInfo(username, int(revision))

    def invalidate_user(self, username: str) -> None:
        pass  # stateless: a deleted user's token fails the permission check instead

    def enable(self) -> None:
        pass

    def disable(self) -> None:
        pass


def _duration(text: str) -> float:
    """A Go duration ("5m", "300s", "1h30m", "1.5s") in seconds."""
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    total = 0.0
    rest = text.strip()
    if not rest:
        raise TokenOptionError("empty duration")
    while rest:
        number = ""
        while rest and (rest[0].isdigit() or rest[0] == "."):
            number, rest = number + rest[0], rest[1:]
        unit = ""
        while rest and not (rest[0].isdigit() or rest[0] == "."):
            unit, rest = unit + rest[0], rest[1:]
        if not number or unit not in units:
            raise TokenOptionError(f"invalid duration {text!r}")
        total += float(number) * units[unit]
    return total


def token_provider(option: str, simple_ttl: float = DEFAULT_SIMPLE_TTL) -> TokenProvider:
    """The provider an ``--auth-token`` value names (etcd's syntax: ``type,key=value,...``)."""
    kind, *pairs = option.split(",")
    opts: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or "=" in value or name in opts:
            raise TokenOptionError(f"invalid --auth-token option {pair!r}")
        opts[name] = value
    if kind == "simple":
        return SimpleTokens(simple_ttl)
    if kind == "jwt":
        unknown = set(opts) - {"sign-method", "pub-key", "priv-key", "ttl"}
        if unknown:
            log.warning("unknown JWT options: %s", ", ".join(sorted(unknown)))
        if "sign-method" not in opts:
            raise TokenOptionError("--auth-token jwt needs sign-method=...")
        try:
            private = Path(opts["priv-key"]).read_bytes() if opts.get("priv-key") else None
            public = Path(opts["pub-key"]).read_bytes() if opts.get("pub-key") else None
        except OSError as exc:
            raise TokenOptionError(f"--auth-token jwt: {exc}") from None
        ttl = _duration(opts["ttl"]) if opts.get("ttl") else DEFAULT_JWT_TTL
        return JWTTokens(opts["sign-method"], private_key=private, public_key=public, ttl=ttl)
    raise TokenOptionError(f"unknown --auth-token type {kind!r} (simple or jwt)")
