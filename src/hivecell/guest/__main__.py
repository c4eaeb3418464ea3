"""``python -m hivecell.guest``: run the guest agent on a unix socket, TCP or a serial device."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import anyio

from hivecell.errors import ConfigError
from hivecell.guest import policy
from hivecell.guest.context import GuestConfig, Services
from hivecell.guest.run import serve


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hivecell.guest", description=__doc__)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--unix", type=Path, help="listen on this unix socket path")
    where.add_argument("--tcp", help="listen on HOST:PORT (requires a token)")
    where.add_argument("--device", type=Path, help="serve a virtio-serial port, e.g. /dev/vport0p1")
    p.add_argument("--token", help="TCP bearer token (default $HIVECELL_GUEST_TOKEN)")
    p.add_argument("--root", type=Path, action="append", help="allowed file root (repeatable)")
    p.add_argument("--max-file-bytes", type=int, default=10 * 1024 * 1024)
    p.add_argument("--display", help="X display (default $DISPLAY)")
    p.add_argument("--run-dir", type=Path, default=Path("/run/hivecell"))
    p.add_argument("--network-mode", default="unknown")
    p.add_argument("--a11y-bus", help="AT-SPI bus address (default $AT_SPI_BUS_ADDRESS)")
    p.add_argument("--policy", type=Path, help="the guest's allow/block lists (TOML, policy.py)")
    p.add_argument("--log-level", default="WARNING")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> GuestConfig:
    token = args.token or os.environ.get("HIVECELL_GUEST_TOKEN")
    if args.tcp and not token:
        raise ConfigError("TCP needs a token: pass --token or set HIVECELL_GUEST_TOKEN", op="start")
    rules, max_file_bytes = policy.from_file(args.policy, args.max_file_bytes)
    return GuestConfig(
        roots=args.root or [Path("/shared"), Path.home()],
        max_file_bytes=max_file_bytes,
        policy=rules,
        display=args.display or os.environ.get("DISPLAY"),
        token=token if args.tcp else None,
        run_dir=args.run_dir,
        network_mode=args.network_mode,
        a11y_bus=args.a11y_bus or os.environ.get("AT_SPI_BUS_ADDRESS"),
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    services = Services(config_from_args(args))
    anyio.run(serve, services, args.unix, args.tcp, args.device)


if __name__ == "__main__":
    main()
