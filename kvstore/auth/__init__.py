"""Authentication and role-based access control, as etcd's.

:mod:`~kvstore.auth.store` keeps users, roles, the enabled flag and the auth
revision in the backend (replicated: changed only by applied entries) and
answers permission checks; :mod:`~kvstore.auth.tokens` issues and verifies
tokens (etcd's simple tokens and JWTs); :mod:`~kvstore.auth.passwords` hashes
with bcrypt off the event loop; :mod:`~kvstore.auth.perms` is the key-range
arithmetic of permissions.
"""

from kvstore.auth.store import ROOT, AuthInfo, AuthStore
from kvstore.auth.tokens import JWTTokens, SimpleTokens, TokenProvider, token_provider

__all__ = [
    "ROOT",
    "AuthInfo",
    "AuthStore",
    "JWTTokens",
    "SimpleTokens",
    "TokenProvider",
    "token_provider",
]
