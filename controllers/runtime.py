"""What every component shares: flags, leader-elected running, workers.

A leader-elected component (controller-manager, scheduler) runs its work in
``lead(writer)``, started when this process acquires the lock and cancelled
as soon as it is lost; the process then campaigns again as a standby.
Writes go through the :class:`election.Leadership` (fenced) handed to
``lead``, so nothing a deposed leader sends is applied.
"""

from __future__ import annotations

import argparse
import logging
import signal
from collections.abc import Awaitable, Callable, Hashable
from typing import TypeVar

import anyio

from controllers.events import emit
from controllers.store import DEFAULT_PREFIX, ConflictError, DirectWriter, Writer
from controllers.workqueue import ShutDown, WorkQueue
from election import (
    Callbacks,
    ConfigError,
    ElectionConfig,
    LeaderElector,
    Leadership,
    LeadershipLost,
)
from election.candidate import announce_candidate
from election.config import default_identity
from kvstore.client import Client, EtcdError, TLSConfig
from kvstore.durations import parse_duration

log = logging.getLogger(__name__)

T = TypeVar("T", bound=Hashable)


class Retry(Exception):
    """Raised by a sync to have its item retried later (with backoff), quietly."""


def duration(text: str) -> float:
    """argparse type for Go-style durations."""
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "t", "true", "yes"):
        return True
    if lowered in ("0", "f", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r}")


def add_store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoints",
        default="127.0.0.1:2379",
        help="comma-separated etcd v3 endpoints (host:port)",
    )
    parser.add_argument(
        "--etcd-prefix",
        default=DEFAULT_PREFIX,
        help="key prefix of the object registry (as kube-apiserver's --etcd-prefix)",
    )
    # kube-apiserver's names for the files of a TLS etcd.
    parser.add_argument("--etcd-cafile", default=None, help="CA that signs the store's certificate")
    parser.add_argument("--etcd-certfile", default=None, help="client certificate for the store")
    parser.add_argument("--etcd-keyfile", default=None, help="key of --etcd-certfile")
    # A store with auth enabled: log in as this user (etcdctl's --user, as two flags).
    parser.add_argument("--etcd-username", default=None, help="user to log in as")
    parser.add_argument("--etcd-password", default=None, help="its password")
    parser.add_argument(
        "--etcd-password-file",
        default=None,
        help="a file holding the password (first line), instead of --etcd-password",
    )


def store_credentials(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(user, password) for the store from the --etcd-username/-password(-file) flags."""
    password = args.etcd_password
    if args.etcd_password_file is not None:
        if password is not None:
            raise SystemExit("give --etcd-password or --etcd-password-file, not both")
        try:
            with open(args.etcd_password_file, encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
        except OSError as error:
            raise SystemExit(f"cannot read --etcd-password-file: {error.strerror}") from None
    if (args.etcd_username is None) != (password is None):
        raise SystemExit("--etcd-username and a password go together")
    return args.etcd_username, password


def store_tls(args: argparse.Namespace) -> TLSConfig | None:
    """TLS towards the store if any of the --etcd-*file flags is given."""
    if args.etcd_cafile is None and args.etcd_certfile is None and args.etcd_keyfile is None:
        return None
    return TLSConfig(args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile)


def add_leader_election_flags(parser: argparse.ArgumentParser, resource_name: str) -> None:
    parser.add_argument(
        "--leader-elect",
        type=boolean,
        nargs="?",
        const=True,
        default=True,
        help="contend for a lease lock and act only while holding it (default true)",
    )
    parser.add_argument("--leader-elect-lease-duration", type=duration, default=15.0)
    parser.add_argument("--leader-elect-renew-deadline", type=duration, default=10.0)
    parser.add_argument("--leader-elect-retry-period", type=duration, default=2.0)
    parser.add_argument("--leader-elect-resource-name", default=resource_name)
    parser.add_argument("--leader-elect-resource-namespace", default="kube-system")
    parser.add_argument("--identity", default="", help="lock identity (default hostname_uuid)")


def election_config(args: argparse.Namespace) -> ElectionConfig:
    return ElectionConfig(
        name=args.leader_elect_resource_name,
        namespace=args.leader_elect_resource_namespace,
        identity=args.identity or default_identity(),
        lease_duration=args.leader_elect_lease_duration,
        renew_deadline=args.leader_elect_renew_deadline,
        retry_period=args.leader_elect_retry_period,
        release_on_cancel=True,
    )


def validate_leader_election(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject inconsistent timings at startup (client-go's rules), not at the first campaign."""
    if args.leader_elect:
        try:
            election_config(args)
        except ConfigError as error:
            parser.error(str(error))


Lead = Callable[[Writer], Awaitable[None]]


async def run_leader_elected(client: Client, args: argparse.Namespace, lead: Lead) -> None:
    """Lead while holding the lock; on losing it, stop everything and rejoin as a standby."""
    if not args.leader_elect:
        emit("started_leading", identity="", token=0, leader_elect=False)
        await lead(DirectWriter(client))
        return
    config = election_config(args)

    async def on_started_leading(leadership: Leadership) -> None:
        emit("started_leading", identity=config.identity, token=leadership.token)
        try:
            await lead(leadership)
        except* LeadershipLost as group:
            log.warning("%s: %s", config.identity, leadership_lost(group))
        finally:
            # Runs once every controller task has finished (cancelled or not).
            emit("controllers_stopped", identity=config.identity)

    elector = LeaderElector(
        client,
        config,
        Callbacks(
            on_started_leading=on_started_leading,
            on_stopped_leading=lambda: emit("stopped_leading", identity=config.identity),
            on_new_leader=lambda holder: emit("new_leader", identity=holder),
        ),
    )
    async with anyio.create_task_group() as tasks:
        # Standbys are visible to observers (the dashboard) through this key.
        tasks.start_soon(announce_candidate, client, config)
        emit("standby", identity=config.identity)
        while True:
            await elector.run()
            emit("standby", identity=config.identity)


BODY_ENDED_STATUS = 1
"""Exit status of a component whose loop returned by itself (it must run until signalled)."""


async def serve(args: argparse.Namespace, body: Callable[[Client], Awaitable[None]]) -> None:
    """Connect, run ``body`` until SIGTERM/SIGINT, then exit cleanly.

    ``body`` never returns on its own: if it does, something ended it that should not
    have (a stray cancellation), and the process exits with ``BODY_ENDED_STATUS`` so
    that its supervisor sees a failure and restarts it, rather than a clean stop.
    """
    endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    user, password = store_credentials(args)
    body_ended = False
    async with (
        Client(endpoints, tls=store_tls(args), user=user, password=password) as client,
        anyio.create_task_group() as tasks,
    ):

        async def run_body() -> None:
            nonlocal body_ended
            await body(client)
            body_ended = True
            tasks.cancel_scope.cancel()

        tasks.start_soon(run_body)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            emit("ready")
            async for _ in signals:
                tasks.cancel_scope.cancel()
                break
    if body_ended:
        log.error("the component's loop returned without being stopped; exiting with a failure")
        emit("exit", status=BODY_ENDED_STATUS)
        raise SystemExit(BODY_ENDED_STATUS)
    emit("exit")


def leadership_lost(error: BaseException) -> LeadershipLost | None:
    """The LeadershipLost in ``error`` (possibly nested in exception groups), if any."""
    if isinstance(error, LeadershipLost):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = leadership_lost(inner)
            if found is not None:
                return found
    return None


async def run_workers(
    name: str,
    queue: WorkQueue[T],
    sync: Callable[[T], Awaitable[None]],
    workers: int,
) -> None:
    """``workers`` tasks taking items from ``queue``; a failed item is retried with backoff.

    LeadershipLost propagates (it ends the tenure); anything else an item
    raises is logged and the item requeued, rate limited.
    """

    async def worker() -> None:
        while True:
            try:
                item = await queue.get()
            except ShutDown:
                return
            try:
                try:
                    await sync(item)
                except Exception as error:
                    lost = leadership_lost(error)
                    if lost is not None and lost is not error:
                        raise lost from error
                    raise
                queue.forget(item)
            except LeadershipLost:
                raise
            except (ConflictError, EtcdError, Retry) as error:
                log.info("%s: %r: %s; retrying", name, item, error)
                queue.add_rate_limited(item)
            except Exception:
                log.exception("%s: %r failed; retrying", name, item)
                queue.add_rate_limited(item)
            finally:
                queue.done(item)

    try:
        async with anyio.create_task_group() as tasks:
            for _ in range(workers):
                tasks.start_soon(worker)
    finally:
        queue.shut_down()


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
