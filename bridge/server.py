"""Transports: the bridge on TCP (both OSC stream framings, detected per connection) and UDP, on asyncio.

The transports only move packets: a TCP connection turns its byte stream into packets with the framing its
first byte announces and answers in the same framing; UDP takes one packet per datagram and answers the source
address (or the ``reply_port`` given at open), audio split into datagrams of at most ``udp_packet_bytes``.
Everything else happens in ``dispatch.Bridge``. A TCP connection stops being read while one of its sessions has
many blocks waiting or while its replies are not being read (back-pressure instead of unbounded queues).
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import signal
import socket
import threading
from pathlib import Path

from lmdm_engine.runtime import Runtime

from .dispatch import Bridge, BridgeSettings
from .engine import Engine
from .framing import FramingError, detect_framing
from .hosted import Peer
from .osc import Message, encode_message

log = logging.getLogger("lmdm_bridge")

MAX_CONNECTIONS = 64
MAX_WRITE_BUFFER = 64 << 20  # a TCP peer that stops reading its replies is dropped past this
UDP_SOCKET_BUFFER = 4 << 20


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


# ---- TCP ------------------------------------------------------------------------------------------------
class TcpPeer(Peer):
    max_packet = None

    def __init__(self, connection: "TcpConnection", framing):
        self.key = ("tcp", connection.number)
        self._connection = connection
        self._framing = framing

    def send(self, message: Message) -> None:
        transport = self._connection.transport
        if transport is None or transport.is_closing():
            return
        transport.write(self._framing.encode(encode_message(message)))
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.warning("connection %d: over %d MiB of replies unread; closing it", self._connection.number,
                        MAX_WRITE_BUFFER >> 20)
            transport.abort()

    def set_congested(self, session: str, congested: bool) -> None:
        self._connection.set_congested(session, congested)


class TcpConnection(asyncio.Protocol):
    _numbers = itertools.count(1)

    def __init__(self, server: "BridgeServer"):
        self.server = server
        self.number = next(self._numbers)
        self.transport: asyncio.Transport | None = None
        self.peer: TcpPeer | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self._framing = None
        self._congested: set[str] = set()
        self._write_paused = False
        self._reading_paused = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        if len(self.server.connections) >= MAX_CONNECTIONS:
            log.warning("refusing a TCP connection from %s: %d connections open (the limit)",
                        transport.get_extra_info("peername"), MAX_CONNECTIONS)
            transport.close()
            return
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._framing is None:
            try:
                self._framing = detect_framing(data[0])(self.server.settings.max_packet_bytes)
            except FramingError as e:
                log.warning("connection %d: %s; closing it", self.number, e)
                self.transport.close()
                return
            self.peer = TcpPeer(self, self._framing)
        try:
            items = self._framing.feed(data)
        except FramingError as e:  # the stream cannot be resynchronised
            self.server.bridge.frame_error(self.peer, e)
            self.transport.close()
            return
        for item in items:
            if isinstance(item, FramingError):
                self.server.bridge.frame_error(self.peer, item)
            else:
                self.server.bridge.handle_packet(item, self.peer)

    def connection_lost(self, exc) -> None:
        self.server.connections.discard(self)
        if self.peer is not None:
            self.server.bridge.peer_closed(self.peer)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def set_congested(self, session: str, congested: bool) -> None:
        if congested:
            self._congested.add(session)
        else:
            self._congested.discard(session)
        self._update_reading()

    def _update_reading(self) -> None:
        pause = self._write_paused or bool(self._congested)
        if pause == self._reading_paused or self.transport is None or self.transport.is_closing():
            return
        self._reading_paused = pause
        if pause:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()


# ---- UDP ------------------------------------------------------------------------------------------------
class UdpPeer(Peer):
    def __init__(self, transport: asyncio.DatagramTransport, source: tuple, max_packet: int, reply_to=None):
        self.key = ("udp", source[0], source[1])
        self.max_packet = max_packet
        self._transport = transport
        self._source = source
        self._reply_to = reply_to or source

    def send(self, message: Message) -> None:
        if not self._transport.is_closing():
            self._transport.sendto(encode_message(message), self._reply_to)

    def with_reply_port(self, port: int) -> "UdpPeer":
        return UdpPeer(self._transport, self._source, self.max_packet, (self._source[0], port))


def udp_socket(host: str, port: int) -> socket.socket:
    """A bound UDP socket with room for bursts of chunks (up to the system's limit, net.core.rmem_max)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UDP_SOCKET_BUFFER)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class UdpEndpoint(asyncio.DatagramProtocol):
    def __init__(self, server: "BridgeServer"):
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        peer = UdpPeer(self.transport, addr[:2], self.server.settings.udp_packet_bytes)
        self.server.bridge.handle_packet(data, peer)

    def error_received(self, exc) -> None:  # e.g. ICMP port unreachable: a host that went away
        log.debug("UDP: %s", exc)


# ---- the server ------------------------------------------------------------------------------------------
class BridgeServer:
    """TCP and UDP listeners in front of one Bridge; ``port`` 0 picks free ports (see ``ready_line``)."""

    def __init__(self, runtime: Runtime, settings: BridgeSettings | None = None, host: str = "127.0.0.1",
                 port: int = 9000, batching: bool = True, workers: int | None = None, model: str | Path = ""):
        self.settings = settings or BridgeSettings()
        self.host, self.port = host, port
        self.engine = Engine(runtime, batching, workers, self.settings.max_sessions)
        self.bridge = Bridge(self.engine, self.settings, str(model))
        self.connections: set[TcpConnection] = set()
        self.tcp_address: tuple | None = None
        self.udp_address: tuple | None = None
        self._tcp: asyncio.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tcp = await loop.create_server(lambda: TcpConnection(self), self.host, self.port)
        self.tcp_address = self._tcp.sockets[0].getsockname()[:2]
        try:  # UDP on the TCP port's number, which is free for UDP in all but rare cases
            sock = udp_socket(self.host, self.tcp_address[1])
        except OSError:
            if self.port:
                raise
            sock = udp_socket(self.host, 0)
        self._udp, _ = await loop.create_datagram_endpoint(lambda: UdpEndpoint(self), sock=sock)
        self.udp_address = sock.getsockname()[:2]
        self.bridge.start()

    def ready_line(self) -> str:
        runtime = self.engine.runtime
        return (f"lmdm bridge ready: tcp {self.tcp_address[0]}:{self.tcp_address[1]} (OSC 1.0 length-prefix or "
                f"1.1 SLIP), udp {self.udp_address[0]}:{self.udp_address[1]}; model {self.bridge.model or '-'} "
                f"({runtime.name}, {runtime.config.sample_rate} Hz); preset {self.settings.preset}; "
                f"batching {'on' if self.engine.batching else 'off'}; up to {self.settings.max_sessions} sessions")

    async def stop(self) -> None:
        """Stop listening, answer what is in flight, close every connection (their replies flushed)."""
        self._tcp.close()
        await self.bridge.shutdown()
        closing = [c.closed for c in self.connections]
        for connection in list(self.connections):
            connection.transport.close()
        if closing:
            await asyncio.wait(closing, timeout=2.0)
        self._udp.close()
        await asyncio.get_running_loop().run_in_executor(None, self.engine.shutdown)


async def serve(server: BridgeServer) -> dict:
    """Run until SIGINT or SIGTERM, printing the ready line; returns the final status."""
    loop = asyncio.get_running_loop()
    await server.start()
    print(server.ready_line(), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: answering what is in flight")
    await server.stop()
    status = server.bridge.status()
    print(f"lmdm bridge stopped: {status['blocks']} blocks answered ({status['late']} late), "
          f"{status['errors']} errors", flush=True)
    return status


class ServerThread:
    """A BridgeServer on its own event loop in a background thread (to embed in a Python program, or test)."""

    def __init__(self, server: BridgeServer):
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="lmdm-bridge", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.server.start())
        except BaseException as e:
            self._error = e
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()

    def start(self) -> "ServerThread":
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error
        return self

    def call(self, fn, *args):
        """Run ``fn(*args)`` on the server's loop and return its result (for inspecting the bridge)."""
        async def run():
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
