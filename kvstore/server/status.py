"""The one place that maps errors to the gRPC status etcd answers with.

The gRPC services and the JSON gateway both answer through :func:`to_status`.
"""

from __future__ import annotations

import logging

from kvstore import errors
from kvstore.rpc.status import StatusCode

log = logging.getLogger(__name__)


_CODE: dict[type[errors.RequestError], StatusCode] = {
    errors.EmptyKeyError: StatusCode.INVALID_ARGUMENT,
    errors.InvalidSortOptionError: StatusCode.INVALID_ARGUMENT,
    errors.KeyNotFoundError: StatusCode.INVALID_ARGUMENT,
    errors.ValueProvidedError: StatusCode.INVALID_ARGUMENT,
    errors.LeaseProvidedError: StatusCode.INVALID_ARGUMENT,
    errors.TooManyOpsError: StatusCode.INVALID_ARGUMENT,
    errors.DuplicateKeyError: StatusCode.INVALID_ARGUMENT,
    errors.CompactedError: StatusCode.OUT_OF_RANGE,
    errors.FutureRevError: StatusCode.OUT_OF_RANGE,
    errors.NoSpaceError: StatusCode.RESOURCE_EXHAUSTED,
    errors.CorruptError: StatusCode.DATA_LOSS,
    errors.LeaseNotFoundError: StatusCode.NOT_FOUND,
    errors.LeaseExistsError: StatusCode.FAILED_PRECONDITION,
    errors.LeaseTTLTooLargeError: StatusCode.OUT_OF_RANGE,
    errors.NotPrimaryError: StatusCode.FAILED_PRECONDITION,
    errors.NoLeaderError: StatusCode.UNAVAILABLE,
    errors.RequestTimeoutError: StatusCode.UNAVAILABLE,
    errors.LeaderChangedError: StatusCode.UNAVAILABLE,
    errors.LeaderTransferTimeoutError: StatusCode.UNAVAILABLE,
    errors.BadLeaderTransfereeError: StatusCode.FAILED_PRECONDITION,
    errors.StoppedError: StatusCode.UNAVAILABLE,
    errors.RequestTooLargeError: StatusCode.INVALID_ARGUMENT,
    errors.TooManyRequestsError: StatusCode.RESOURCE_EXHAUSTED,
    errors.MemberNotFoundError: StatusCode.NOT_FOUND,
    errors.MemberExistError: StatusCode.FAILED_PRECONDITION,
    errors.PeerURLExistError: StatusCode.FAILED_PRECONDITION,
    errors.MemberBadURLsError: StatusCode.INVALID_ARGUMENT,
    errors.MemberNotLearnerError: StatusCode.FAILED_PRECONDITION,
    errors.LearnerNotReadyError: StatusCode.FAILED_PRECONDITION,
    errors.TooManyLearnersError: StatusCode.FAILED_PRECONDITION,
    errors.NotEnoughStartedMembersError: StatusCode.FAILED_PRECONDITION,
    errors.UnhealthyClusterError: StatusCode.UNAVAILABLE,
    errors.RecipeError: StatusCode.UNKNOWN,
    errors.RootUserNotExistError: StatusCode.FAILED_PRECONDITION,
    errors.RootRoleNotExistError: StatusCode.FAILED_PRECONDITION,
    errors.UserAlreadyExistError: StatusCode.FAILED_PRECONDITION,
    errors.UserEmptyError: StatusCode.INVALID_ARGUMENT,
    errors.UserNotFoundError: StatusCode.FAILED_PRECONDITION,
    errors.RoleAlreadyExistError: StatusCode.FAILED_PRECONDITION,
    errors.RoleNotFoundError: StatusCode.FAILED_PRECONDITION,
    errors.RoleEmptyError: StatusCode.INVALID_ARGUMENT,
    errors.AuthFailedError: StatusCode.INVALID_ARGUMENT,
    errors.PermissionNotGivenError: StatusCode.INVALID_ARGUMENT,
    errors.PermissionDeniedError: StatusCode.PERMISSION_DENIED,
    errors.RoleNotGrantedError: StatusCode.FAILED_PRECONDITION,
    errors.PermissionNotGrantedError: StatusCode.FAILED_PRECONDITION,
    errors.AuthNotEnabledError: StatusCode.FAILED_PRECONDITION,
    errors.InvalidAuthTokenError: StatusCode.UNAUTHENTICATED,
    errors.InvalidAuthMgmtError: StatusCode.INVALID_ARGUMENT,
    errors.AuthOldRevisionError: StatusCode.INVALID_ARGUMENT,
    errors.PasswordTooLongError: StatusCode.UNKNOWN,
    errors.NoPasswordUserError: StatusCode.UNKNOWN,
}


def code_of(error_type: type[errors.RequestError]) -> StatusCode:
    """The status etcd answers ``error_type`` with."""
    for cls in error_type.__mro__:
        code = _CODE.get(cls)
        if code is not None:
            return code
    return StatusCode.UNKNOWN


def to_status(exc: BaseException) -> tuple[StatusCode, str]:
    """The gRPC status (code, message) etcd answers ``exc`` with."""
    if isinstance(exc, errors.RemoteError):
        return StatusCode(exc.code), exc.message
    if isinstance(exc, errors.RequestError):
        return code_of(type(exc)), exc.message
    log.exception("unexpected error serving a request", exc_info=exc)
    return StatusCode.UNKNOWN, f"etcdserver: {exc}"
