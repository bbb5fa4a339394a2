"""``dashboard --endpoints ...``: serve the web dashboard of a store and its control plane.

Prints ``dashboard: http://HOST:PORT/`` once it listens; SIGTERM or Ctrl-C
stops it (open pages are disconnected, the store client closed).
"""

from __future__ import annotations

import argparse
import logging
import signal
import ssl
import sys

import anyio
from aiohttp import web

from controllers.runtime import add_store_flags, duration, store_tls
from dashboard.web import Config, Dashboard, build_app
from kvstore.client import Client

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:8080"
# Open pages are told to go (their streams end at once); then the server stops.
SHUTDOWN_TIMEOUT = 3.0


def _listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--listen {text!r}: expected HOST:PORT") from None
    if not host or not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"--listen {text!r}: expected HOST:PORT")
    return host.strip("[]"), number


def _metrics_urls(text: str) -> dict[str, str]:
    urls = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, url = item.partition("=")
        if not sep or not name or not url.startswith(("http://", "https://")):
            raise argparse.ArgumentTypeError(f"--metrics-urls {item!r}: expected NAME=URL")
        urls[name] = url
    return urls


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dashboard", description=__doc__.split("\n")[0])
    add_store_flags(parser)
    parser.add_argument(
        "--listen", type=_listen, default=_listen(DEFAULT_LISTEN), help="HOST:PORT to serve on"
    )
    parser.add_argument(
        "--interval",
        type=duration,
        default=1.0,
        help="how often member status and metrics are polled (they have no watch)",
    )
    parser.add_argument(
        "--metrics-urls",
        type=_metrics_urls,
        default={},
        help="member=URL,... of each member's /metrics (default: found on the client URL, "
        "as etcd serves it, or at the client port + 2, as our members do)",
    )
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def metrics_ssl(args: argparse.Namespace) -> ssl.SSLContext | None:
    """https metrics URLs are checked with the store's CA and shown its client certificate."""
    if args.etcd_cafile is None and args.etcd_certfile is None:
        return None
    context = ssl.create_default_context(cafile=args.etcd_cafile)
    if args.etcd_certfile is not None:
        context.load_cert_chain(args.etcd_certfile, args.etcd_keyfile)
    return context


async def serve(args: argparse.Namespace) -> None:
    endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    config = Config(
        etcd_prefix=args.etcd_prefix,
        interval=args.interval,
        metrics_urls=args.metrics_urls,
        metrics_ssl=metrics_ssl(args),
    )
    host, port = args.listen
    async with (
        Client(endpoints, tls=store_tls(args)) as client,
        anyio.create_task_group() as tasks,
    ):
        dashboard = Dashboard(client, config)
        tasks.start_soon(dashboard.run)
        runner = web.AppRunner(
            build_app(dashboard), handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, reuse_address=True).start()
            shown = f"[{host}]" if ":" in host else host
            print(f"dashboard: http://{shown}:{port}/", flush=True)
            log.info("serving the dashboard of %s on %s:%d", ",".join(endpoints), host, port)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    break
        finally:
            with anyio.CancelScope(shield=True):
                await runner.cleanup()
            tasks.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        anyio.run(serve, args)
    except* OSError as group:  # the port is taken, most often
        print(f"dashboard: {group.exceptions[0]}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
