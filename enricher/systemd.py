"""A tiny sd_notify client: the documented datagram protocol, no dependency.

systemd passes `$NOTIFY_SOCKET` to a `Type=notify` service: an AF_UNIX datagram socket, given
either as a filesystem path or, with a leading '@', as a name in the abstract namespace. Each
datagram is newline-separated `KEY=VALUE` assignments (sd_notify(3)). Outside systemd (a
container, a terminal, the tests) the variable is unset and every call is a cheap no-op.

Nothing here raises on a socket error or logs: a status report must never take the daemon down.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

__all__ = ["notify", "ready", "status", "stopping", "watchdog_interval", "watchdog_ping"]


def _address(value: str) -> str | None:
    """The socket address for `$NOTIFY_SOCKET`, or None for a form we don't speak (e.g. vsock:)."""
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    return None


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send one state datagram (e.g. "READY=1"); True if it was sent, False if unset or it failed."""
    value = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    address = _address(value) if value else None
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode("utf-8"), address)
    except OSError:
        return False
    return True


def ready() -> bool:
    """Startup is complete: systemd moves a Type=notify unit from 'activating' to 'active'."""
    return notify("READY=1")


def stopping() -> bool:
    """Shutdown has begun (drain and flush under way)."""
    return notify("STOPPING=1")


def watchdog_ping() -> bool:
    """Keep-alive for `WatchdogSec=`; send it every `watchdog_interval()` seconds."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """A one-line status shown by `systemctl status`; newlines would end the assignment."""
    return notify("STATUS=" + " ".join(text.splitlines()))


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings: half of `$WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises.

    None when the watchdog is off, the value is malformed, or `$WATCHDOG_PID` names another
    process (the variables were inherited, not meant for us).
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000
