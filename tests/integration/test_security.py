"""Credentials work, and never show: not in a log line, not in an error."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from enricher.app import Enricher
from enricher.embedded import RedisServer, find_redis_server
from enricher.records import UNDERLYING
from enricher.redact import redact_text, redact_url
from enricher.settings import Settings
from tests.conftest import sample, wait_for
from tests.integration.helpers import publish

SECRET = "s3cret-Pa55"


@pytest.fixture
def locked_redis() -> Iterator[RedisServer]:
    with RedisServer(password=SECRET) as server:
        yield server


def test_redaction_of_urls_and_driver_messages() -> None:
    assert redact_url(f"redis://user:{SECRET}@host:6380/0") == "redis://user:***@host:6380/0"
    assert redact_url("rediss://host:6380/0") == "rediss://host:6380/0"
    text = f"connection to mongodb+srv://app:{SECRET}@cluster.example/db?tls=true failed"
    assert SECRET not in redact_text(text)
    assert SECRET not in redact_text(f"AUTH failed for {SECRET}", secrets=(SECRET,))


async def test_a_password_protected_redis_works_and_its_password_never_shows(
    locked_redis: RedisServer,
    make_settings: Callable[..., Settings],
) -> None:
    app = Enricher(make_settings(redis_url=locked_redis.url, persist=False, log_level="debug"))
    with capture_logs() as logged:
        await run_and_break(app, locked_redis)
    events = {entry["event"] for entry in logged}
    assert {"starting", "redis_disconnected", "stopped"} <= events
    assert SECRET not in repr(logged)


async def run_and_break(app: Enricher, locked_redis: RedisServer) -> None:
    await app.start()
    try:
        await one_tick_through(app, locked_redis.url)
        locked_redis.kill()  # errors now name the URL: still without the password
        await wait_for(lambda: app.metrics.events["redis_reconnects"] >= 1, what="a reconnect attempt")
    finally:
        await app.stop()


async def one_tick_through(app: Enricher, url: str) -> None:
    """Publish the sample tick on `url` and see it processed and cached."""
    client = Redis.from_url(url)
    try:
        await publish(client, UNDERLYING, sample("synthetic_underlying.json"))
        await wait_for(lambda: app.metrics.messages[UNDERLYING, "processed"] == 1, what="the tick processed")
        assert await client.get("latest:underlying:NIFTY") is not None
    finally:
        await client.aclose()


class TlsRedisServer(RedisServer):
    """redis-server with TLS only (port 0 closes plain TCP), a self-signed certificate and a password."""

    name = "redis-tls"

    def _command(self) -> list[str]:
        plain = super()._command()
        port_at = plain.index("--port")
        plain[port_at + 1] = "0"
        return [
            *plain,
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.workdir / "cert.pem"),
            "--tls-key-file", str(self.workdir / "key.pem"),
            "--tls-ca-cert-file", str(self.workdir / "cert.pem"),
            "--tls-auth-clients", "no",
        ]  # fmt: skip

    def _ready(self) -> bool:
        import socket
        import ssl

        context = ssl.create_default_context(cafile=str(self.workdir / "cert.pem"))
        try:
            with (
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                tls.sendall(b"PING\r\n")
                return tls.recv(64).startswith(b"-NOAUTH")
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"rediss://:{self.password}@127.0.0.1:{self.port}/0?ssl_ca_certs={self.workdir / 'cert.pem'}"


@pytest.fixture
def tls_redis() -> Iterator[TlsRedisServer]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    binary = find_redis_server()
    if "libssl" not in subprocess.run(["ldd", binary], capture_output=True, text=True, check=False).stdout:
        pytest.skip(f"{binary} is built without TLS")
    server = TlsRedisServer(password=SECRET, binary=binary)
    certificate = [
        openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
        "-addext", "subjectAltName=IP:127.0.0.1",
        "-keyout", str(server.workdir / "key.pem"), "-out", str(server.workdir / "cert.pem"),
    ]  # fmt: skip
    subprocess.run(certificate, check=True, capture_output=True)
    with server:
        yield server


async def test_tls_with_a_password_works(tls_redis: TlsRedisServer, make_settings: Callable[..., Settings]) -> None:
    app = Enricher(make_settings(redis_url=tls_redis.url, persist=False))
    with capture_logs() as logged:
        await app.start()
        try:
            await one_tick_through(app, tls_redis.url)
        finally:
            await app.stop()
    assert SECRET not in repr(logged)
