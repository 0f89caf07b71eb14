"""A lean subscriber connection: RESP over an asyncio stream, parsed by hiredis in bulk.

redis-py's `PubSub` parses one message per call, each inside its own timeout context, which
was a quarter of enricher's CPU under a burst. Here one socket read is fed to hiredis and
every complete reply in it is handled in a loop. Only what a subscriber needs: connect
(TCP, TLS or a Unix socket, AUTH), SUBSCRIBE, PING, UNSUBSCRIBE, and reading replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator
from typing import Any

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

READ_SIZE = 1 << 16


def command(*parts: str | bytes) -> bytes:
    encoded = [part.encode() if isinstance(part, str) else part for part in parts]
    chunks = [b"*%d\r\n" % len(encoded)]
    for part in encoded:
        chunks.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(chunks)


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if str(options.get("ssl_cert_reqs", "required")).lower() in ("none", "cert_none"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def url_scheme(options: dict[str, Any]) -> str:
    connection_class = options.get("connection_class")
    return "rediss" if connection_class is not None and connection_class.__name__ == "SSLConnection" else "redis"


class SubscriberConnection:
    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        self._options: dict[str, Any] = dict(parse_url(url))
        self._connect_timeout = connect_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser = hiredis.Reader()

    async def connect(self) -> None:
        options = self._options
        if "path" in options:
            opening = asyncio.open_unix_connection(options["path"])
        else:
            tls = _tls_context(options) if url_scheme(options) == "rediss" else None
            opening = asyncio.open_connection(options.get("host", "localhost"), options.get("port", 6379), ssl=tls)
        try:
            self._reader, self._writer = await asyncio.wait_for(opening, self._connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        password = options.get("password")
        if password:
            username = options.get("username")
            await self.send(command("AUTH", username, password) if username else command("AUTH", password))
            reply = await self._one_reply()
            if isinstance(reply, hiredis.ReplyError):
                raise AuthenticationError(str(reply))

    async def _one_reply(self) -> Any:
        while True:
            reply = self._parser.gets()
            if reply is not False:
                return reply
            await self._fill(self._connect_timeout)

    async def send(self, data: bytes) -> None:
        if self._writer is None:
            raise RedisConnectionError("not connected")
        try:
            self._writer.write(data)
            await self._writer.drain()
        except OSError as exc:
            raise RedisConnectionError(f"lost the Redis connection: {exc}") from exc

    async def _fill(self, timeout: float | None) -> None:
        assert self._reader is not None
        try:
            data = await asyncio.wait_for(self._reader.read(READ_SIZE), timeout)
        except TimeoutError:
            raise  # silence, not a failure (TimeoutError is an OSError since 3.11): the caller PINGs
        except OSError as exc:
            raise RedisConnectionError(f"lost the Redis connection: {exc}") from exc
        if not data:
            raise RedisConnectionError("Redis closed the connection")
        self._parser.feed(data)

    async def replies(self, timeout: float | None) -> list[Any]:
        """Every complete reply of the next read; raises TimeoutError after `timeout` s of silence."""
        replies = list(self._drain())
        if replies:
            return replies
        await self._fill(timeout)
        return list(self._drain())

    def _drain(self) -> Iterator[Any]:
        gets = self._parser.gets
        while (reply := gets()) is not False:
            if isinstance(reply, hiredis.ReplyError):
                raise ResponseError(str(reply))
            yield reply

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        self._parser = hiredis.Reader()
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):  # already gone: that is why we are closing
                await writer.wait_closed()
