"""The errors a request fails with, each worded as etcd words it.

A leaf module: the store, the lessor and the server raise these; they know
nothing of gRPC. :mod:`kvstore.server.status` maps each class to the gRPC
status code etcd answers with (the JSON gateway reuses that map).
"""

from __future__ import annotations

from kvstore import rpctypes


class RequestError(Exception):
    """Base class: ``message`` is what goes on the wire (etcd's text, word for word)."""

    message: str = "etcdserver: unknown error"

    def __init__(self, message: str | None = None) -> None:
        if message is not None:
            self.message = message
        super().__init__(self.message)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.message == self.message

    def __hash__(self) -> int:
        return hash((type(self), self.message))


# ----- request validation and the MVCC store


class EmptyKeyError(RequestError):
    """A request without a key."""

    message = rpctypes.ERR_EMPTY_KEY


class InvalidSortOptionError(RequestError):
    """A range sorted by an order or a field that does not exist."""

    message = rpctypes.ERR_INVALID_SORT_OPTION


class KeyNotFoundError(RequestError):
    """ignore_value/ignore_lease on a missing key; or an empty txn op."""

    message = rpctypes.ERR_KEY_NOT_FOUND


class ValueProvidedError(RequestError):
    """ignore_value together with a value."""

    message = rpctypes.ERR_VALUE_PROVIDED


class LeaseProvidedError(RequestError):
    """ignore_lease together with a lease."""

    message = rpctypes.ERR_LEASE_PROVIDED


class TooManyOpsError(RequestError):
    """A txn with more than max-txn-ops compares or ops in a branch."""

    message = rpctypes.ERR_TOO_MANY_OPS


class DuplicateKeyError(RequestError):
    """A txn that puts a key twice, or puts and deletes it."""

    message = rpctypes.ERR_DUPLICATE_KEY


class CompactedError(RequestError):
    """A revision at or below the compacted one."""

    message = rpctypes.ERR_COMPACTED


class FutureRevError(RequestError):
    """A revision beyond the current one."""

    message = rpctypes.ERR_FUTURE_REV


class CorruptError(RequestError):
    """A write while a CORRUPT alarm is raised (members disagree on their data)."""

    message = rpctypes.ERR_CORRUPT


class NoSpaceError(RequestError):
    """A write while the backend is over its quota (or a NOSPACE alarm is raised)."""

    message = rpctypes.ERR_NO_SPACE


# ----- leases


class LeaseNotFoundError(RequestError):
    """An unknown (or expired) lease."""

    message = rpctypes.ERR_LEASE_NOT_FOUND


class LeaseExistsError(RequestError):
    """A grant of an ID already in use."""

    message = rpctypes.ERR_LEASE_EXISTS


class LeaseTTLTooLargeError(RequestError):
    """A TTL above MAX_LEASE_TTL."""

    message = rpctypes.ERR_LEASE_TTL_TOO_LARGE


class NotPrimaryError(RequestError):
    """A lease call on a member that is not the lessor primary (the leader)."""

    message = rpctypes.ERR_NOT_LEADER


# ----- the server


class NoLeaderError(RequestError):
    message = rpctypes.ERR_NO_LEADER


class RequestTimeoutError(RequestError):
    message = rpctypes.ERR_TIMEOUT


class LeaderTransferTimeoutError(RequestError):
    message = rpctypes.ERR_TIMEOUT_LEADER_TRANSFER


class BadLeaderTransfereeError(RequestError):
    """MoveLeader to a member that is not a voting member of the cluster."""

    message = rpctypes.ERR_BAD_LEADER_TRANSFEREE


class LeaderChangedError(RequestError):
    message = rpctypes.ERR_LEADER_CHANGED


class StoppedError(RequestError):
    message = rpctypes.ERR_STOPPED


class RequestTooLargeError(RequestError):
    message = rpctypes.ERR_REQUEST_TOO_LARGE


class TooManyRequestsError(RequestError):
    """Too many proposals waiting, or apply too far behind commit (etcd's limits)."""

    message = rpctypes.ERR_TOO_MANY_REQUESTS


# ----- membership


class MemberNotFoundError(RequestError):
    message = rpctypes.ERR_MEMBER_NOT_FOUND


class MemberExistError(RequestError):
    message = rpctypes.ERR_MEMBER_EXISTS


class PeerURLExistError(RequestError):
    message = rpctypes.ERR_PEER_URL_EXISTS


class MemberBadURLsError(RequestError):
    message = rpctypes.ERR_MEMBER_BAD_URLS


class MemberNotLearnerError(RequestError):
    message = rpctypes.ERR_MEMBER_NOT_LEARNER


class LearnerNotReadyError(RequestError):
    message = rpctypes.ERR_LEARNER_NOT_READY


class TooManyLearnersError(RequestError):
    message = rpctypes.ERR_TOO_MANY_LEARNERS


class NotEnoughStartedMembersError(RequestError):
    message = rpctypes.ERR_NOT_ENOUGH_STARTED_MEMBERS


class UnhealthyClusterError(RequestError):
    message = rpctypes.ERR_UNHEALTHY


# ----- authentication and access control


class AuthError(RequestError):
    """Base class of the auth errors (users, roles, tokens, permissions)."""


class RootUserNotExistError(AuthError):
    """AuthEnable without a ``root`` user."""

    message = rpctypes.ERR_ROOT_USER_NOT_EXIST


class RootRoleNotExistError(AuthError):
    """AuthEnable while ``root`` lacks the ``root`` role."""

    message = rpctypes.ERR_ROOT_ROLE_NOT_EXIST


class UserAlreadyExistError(AuthError):
    message = rpctypes.ERR_USER_ALREADY_EXIST


class UserEmptyError(AuthError):
    """A request that needs a user and came without one (no token), or UserAdd with no name."""

    message = rpctypes.ERR_USER_EMPTY


class UserNotFoundError(AuthError):
    message = rpctypes.ERR_USER_NOT_FOUND


class RoleAlreadyExistError(AuthError):
    message = rpctypes.ERR_ROLE_ALREADY_EXIST


class RoleNotFoundError(AuthError):
    message = rpctypes.ERR_ROLE_NOT_FOUND


class RoleEmptyError(AuthError):
    message = rpctypes.ERR_ROLE_EMPTY


class AuthFailedError(AuthError):
    """Unknown user, wrong password, or a user without a password."""

    message = rpctypes.ERR_AUTH_FAILED


class NoPasswordUserError(AuthError):
    """A login with a password as a user created with --no-password: etcd sends its
    internal text with status UNKNOWN."""

    message = "auth: authentication failed, password was given for no password user"


class PermissionNotGivenError(AuthError):
    message = rpctypes.ERR_PERMISSION_NOT_GIVEN


class PermissionDeniedError(AuthError):
    message = rpctypes.ERR_PERMISSION_DENIED


class RoleNotGrantedError(AuthError):
    message = rpctypes.ERR_ROLE_NOT_GRANTED


class PermissionNotGrantedError(AuthError):
    message = rpctypes.ERR_PERMISSION_NOT_GRANTED


class AuthNotEnabledError(AuthError):
    message = rpctypes.ERR_AUTH_NOT_ENABLED


class InvalidAuthTokenError(AuthError):
    """A token this member does not know (expired, revoked, forged)."""

    message = rpctypes.ERR_INVALID_AUTH_TOKEN


class InvalidAuthMgmtError(AuthError):
    """Deleting root, revoking root's root role while enabled, or an empty permission range."""

    message = rpctypes.ERR_INVALID_AUTH_MGMT


class AuthOldRevisionError(AuthError):
    """The auth store changed since the token's revision (or during the request)."""

    message = rpctypes.ERR_AUTH_OLD_REVISION


class PasswordTooLongError(AuthError):
    """bcrypt takes at most 72 bytes; Go's bcrypt refuses longer passwords with this text."""

    message = "bcrypt: password length exceeds 72 bytes"


# ----- errors with their own status


class RemoteError(RequestError):
    """Another member's answer, passed on unchanged (``code``: its gRPC status number)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, RemoteError)
            and other.code == self.code
            and other.message == self.message
        )

    def __hash__(self) -> int:
        return hash((self.code, self.message))


class RecipeError(RequestError):
    """A v3lock/v3election recipe's failure: its Go error text, with status UNKNOWN."""
