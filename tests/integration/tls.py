"""A TLS terminator on loopback, in front of the embedded broker (Tansu 0.6.0 cannot terminate TLS itself).

Python's ssl (OpenSSL) does the handshake, optionally requiring a client certificate (mTLS); the bytes inside are
passed to and from the real broker unchanged. The broker advertises the terminator's address, so every connection a
client opens goes through TLS. Certificates come from trustme, a throwaway CA made per test.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from pathlib import Path

import trustme


class TlsTerminator:
    def __init__(self, upstream: str, ca: trustme.CA, *, port: int, require_client_cert: bool) -> None:
        self.upstream_host, upstream_port = upstream.rsplit(":", 1)
        self.upstream_port = int(upstream_port)
        self.port = port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(self.context)
        if require_client_cert:
            self.context.verify_mode = ssl.CERT_REQUIRED
            ca.configure_trust(self.context)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.AbstractServer | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TlsTerminator:
        self.thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.context), self.loop
        )
        self.server = started.result(timeout=10)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


def write_client_files(ca: trustme.CA, directory: Path) -> dict[str, Path]:
    """The CA bundle, and a client certificate and key for mTLS, as PEM files like a deployment mounts them."""
    directory.mkdir(parents=True, exist_ok=True)
    client = ca.issue_cert("qcat-worker@example.com")
    files = {"cafile": directory / "ca.pem", "certfile": directory / "client.pem", "keyfile": directory / "client.key"}
    ca.cert_pem.write_to_path(str(files["cafile"]))
    client.cert_chain_pems[0].write_to_path(str(files["certfile"]))
    client.private_key_pem.write_to_path(str(files["keyfile"]))
    return files
