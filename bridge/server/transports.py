"""Transports: the bridge on TCP (both OSC stream framings, detected per connection) and UDP, on asyncio.

The transports only move packets: a TCP connection turns its byte stream into packets with the framing its
first byte announces and answers in the same framing; UDP takes one packet per datagram and answers the source
address (or the ``reply_port`` given at open), audio split into datagrams of at most ``udp_packet_bytes``.
Everything else happens in ``dispatch.Bridge``. A TCP connection stops being read while one of its sessions has
many blocks waiting or while its replies are not being read (back-pressure instead of unbounded queues).

Peers cannot hold the transports either: a TCP connection must send a whole packet within the handshake timeout,
one without sessions is closed after the idle timeout, and when all connections are taken the one without
sessions that was quiet longest makes room for a new one. A UDP source address is sent at most
``udp_reply_factor`` times the bytes it sent until it proves it receives what is sent to it (it echoes a cookie:
dispatch.py), so a forged source address never turns the bridge into an amplifier; nothing is sent to the bridge's
own port, and datagrams that claim to come from it are dropped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import os
import signal
import socket
import threading
from collections import Counter
from pathlib import Path

from lmdm_bridge.hosting.peer import Peer
from lmdm_bridge.hosting.workers import Workers
from lmdm_bridge.protocol.namespace import AUDIO, reply_address
from lmdm_bridge.wire.blocks import audio_packets
from lmdm_bridge.wire.framing import FramingError, detect_framing
from lmdm_bridge.wire.osc import Message, encode_message
from lmdm_engine.runtime.interface import Runtime

from .dispatch import Bridge, BridgeSettings

log = logging.getLogger("lmdm_bridge")

MAX_CONNECTIONS = 64
MAX_WRITE_BUFFER = 64 << 20  # a TCP peer that stops reading its replies is dropped past this
UDP_SOCKET_BUFFER = 4 << 20
AUDIO_REPLY = reply_address(AUDIO)
UDP_READ_BYTES = 1 << 16  # larger than any UDP datagram's payload
UDP_DRAIN = 256  # datagrams read in one go at most, so that TCP peers and timers get their turn
MAX_UDP_PEERS = 1024  # source addresses whose peer objects are kept
SWEEP_SECONDS = 1.0  # how often connections are checked for the handshake and idle timeouts
UDP_MAX_BUFFERED = 4 << 20  # datagrams waiting for the UDP socket past this are dropped


def _loopback_address(address: str) -> bool:
    """Whether a numeric address (an IPv6 one with or without its ``%zone``) is a loopback address; raises
    ValueError for one that is not an IP address."""
    return ipaddress.ip_address(address.split("%")[0]).is_loopback


def _is_own_address(host: str, bound: str) -> bool:
    try:
        return host == bound or _loopback_address(host)
    except ValueError:
        return False


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(_loopback_address(info[4][0]) for info in infos)


# ---- writing from the event loop and from worker threads ------------------------------------------------------
class _Writer:
    """Writes to one transport from its event loop or from any other thread, in the order they are made.

    A block's reply is sent by the worker thread that processed it (one thread hand-off less per block than
    waking the event loop for it; see ``HostedSession._answer_from_worker``). asyncio transports belong to their
    loop, so another thread writes to the socket itself, and only while nothing is waiting in the transport; what
    it cannot write at once is handed to the loop, and the loop's own writes queue behind it. Every write holds
    ``lock``; the transport's ``connection_lost`` marks the writer dead under it, before the socket is closed."""

    def __init__(self):
        self.lock = threading.Lock()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.transport = None
        self._handoff: list = []  # (write function, args) waiting for the loop, in order
        self._dead = False

    def _usable(self) -> bool:
        return not self._dead and self.transport is not None and not self.transport.is_closing()

    def _submit(self, direct, loop_write, *args) -> None:
        """``direct(*args)`` from a thread other than the loop's (it returns the args of what is left to write,
        or None), ``loop_write(*args)`` on the loop; called with ``lock`` held."""
        if threading.get_ident() == self._loop_thread:
            if self._handoff:
                self._handoff.append((loop_write, args))
            else:
                loop_write(*args)
            return
        if not self._handoff and not self.transport.get_write_buffer_size():
            args = direct(*args)
            if args is None:
                return
        self._handoff.append((loop_write, args))
        if len(self._handoff) == 1:
            try:
                self._loop.call_soon_threadsafe(self._flush)
            except RuntimeError:  # the loop is closed: nothing can be written any more
                self._handoff.clear()

    def _flush(self) -> None:
        with self.lock:
            waiting, self._handoff = self._handoff, []
            for loop_write, args in waiting:
                if not self._usable():
                    return
                loop_write(*args)

    def close(self) -> None:
        """The transport is gone (from its ``connection_lost``): nothing more is written."""
        with self.lock:
            self._dead = True
            self._handoff.clear()


class _StreamWriter(_Writer):
    def __init__(self, connection_number: int):
        super().__init__()
        self._number = connection_number
        self._sock: socket.socket | None = None  # a duplicate of the connection's socket, for other threads

    def attach(self, transport) -> None:
        self.transport = transport
        try:
            sock = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
            sock.setblocking(False)
            self._sock = sock
        except (OSError, AttributeError):  # then other threads hand every write to the loop
            self._sock = None

    def write(self, data) -> None:
        with self.lock:
            if self._usable():
                self._submit(self._send_now, self._write_transport, data)

    def _send_now(self, data):
        if self._sock is None:
            return (data,)
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # the connection broke: the loop finds out on its side
            return None
        return None if sent == len(data) else (memoryview(data)[sent:],)

    def _write_transport(self, data) -> None:
        self.transport.write(data)
        if self.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.warning("connection %d: over %d MiB of replies unread; closing it", self._number,
                        MAX_WRITE_BUFFER >> 20)
            self.transport.abort()

    def close(self) -> None:
        super().close()
        with self.lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class _DatagramWriter(_Writer):
    def __init__(self, sock: socket.socket | None, counts: Counter):
        super().__init__()
        self._sock = sock  # the endpoint's socket (the transport's own)
        self._counts = counts  # the bridge's: udp_dropped, datagrams dropped because the socket's buffer was full

    def send(self, packets: list, address) -> None:
        with self.lock:
            if self._usable():
                self._submit(self._send_now, self._sendto_transport, packets, address)

    def _send_now(self, packets: list, address):
        if self._sock is None:
            return packets, address
        for i, packet in enumerate(packets):
            try:
                self._sock.sendto(packet, address)
            except (BlockingIOError, InterruptedError):
                return packets[i:], address
            except OSError as e:  # as asyncio does: that datagram is dropped
                log.debug("UDP: %s", e)
        return None

    def _sendto_transport(self, packets: list, address) -> None:
        for packet in packets:
            if self.transport.get_write_buffer_size() > UDP_MAX_BUFFERED:  # a lossy transport: dropped, not kept
                self._counts["udp_dropped"] += 1
                continue
            self.transport.sendto(packet, address)


# ---- TCP ------------------------------------------------------------------------------------------------
class TcpPeer(Peer):
    max_packet = None
    threadsafe_sends = True

    def __init__(self, connection: "TcpConnection", framing):
        self.key = ("tcp", connection.number)
        self._connection = connection
        self._framing = framing

    def send(self, message: Message) -> None:
        self._write(self._framing.encode(encode_message(message)))

    def send_audio(self, session: str, seq: int, audio, flags: int) -> None:
        (packet,) = audio_packets(AUDIO_REPLY, session, seq, audio, flags, reserve=self._framing.header_size)
        self._write(self._framing.frame(packet))

    def _write(self, data) -> None:
        self._connection.writer.write(data)

    def set_congested(self, session: str, congested: bool) -> None:
        self._connection.set_congested(session, congested)


class TcpConnection(asyncio.Protocol):
    _numbers = itertools.count(1)

    def __init__(self, server: "BridgeServer"):
        self.server = server
        self.number = next(self._numbers)
        self.transport: asyncio.Transport | None = None
        self.peer: TcpPeer | None = None
        loop = asyncio.get_running_loop()
        self.closed = loop.create_future()
        self.opened_at = loop.time()
        self.last_packet: float | None = None  # loop time of its last whole packet (None: none yet)
        self.writer = _StreamWriter(self.number)
        self._framing = None
        self._congested: set[str] = set()
        self._write_paused = False
        self._reading_paused = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        if not self.server.make_room():
            log.warning("refusing a TCP connection from %s: %d connections open (the limit), all with sessions",
                        transport.get_extra_info("peername"), MAX_CONNECTIONS)
            transport.close()
            return
        self.writer.attach(transport)
        self.server.connections.add(self)

    @property
    def sessions(self) -> int:
        return 0 if self.peer is None else self.server.bridge.peer_sessions(self.peer)

    def idle_since(self) -> float:
        return self.opened_at if self.last_packet is None else self.last_packet

    def close_for(self, reason: str) -> None:
        log.info("connection %d closed: %s", self.number, reason)
        self.transport.abort()

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
                self.last_packet = asyncio.get_running_loop().time()
                self.server.bridge.handle_packet(item, self.peer)

    def connection_lost(self, exc) -> None:
        self.writer.close()
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
class ReplyBudget:
    """What may be sent on behalf of one UDP source address before it proves its address: ``factor`` times the
    bytes it sent (as QUIC holds a server to 3x before the client's address is validated). Replies refused are
    counted in ``counts`` (the bridge's) as udp_refused."""

    def __init__(self, factor: float, counts: Counter):
        self.factor = factor
        self.received = self.sent = 0
        self._counts = counts

    def allow(self, n: int) -> bool:
        if self.sent + n > self.factor * self.received:
            self._counts["udp_refused"] += 1
            return False
        self.sent += n
        return True


class UdpPeer(Peer):
    threadsafe_sends = True
    spoofable = True

    def __init__(self, writer: _DatagramWriter, source: tuple, max_packet: int, budget: ReplyBudget,
                 server_port: int, reply_to=None):
        self.key = ("udp", source[0], source[1])
        self.max_packet = max_packet
        self.budget = budget
        self._writer = writer
        self._source = source
        self._server_port = server_port
        self._reply_to = reply_to or source
        self._proven = False

    def send(self, message: Message) -> None:
        packet = encode_message(message)
        if self._proven or self.budget.allow(len(packet)):
            self._writer.send([packet], self._reply_to)

    def send_audio(self, session: str, seq: int, audio, flags: int) -> None:
        packets = audio_packets(AUDIO_REPLY, session, seq, audio, flags, self.max_packet)
        if self._proven or self.budget.allow(sum(map(len, packets))):
            self._writer.send(packets, self._reply_to)

    def prove_address(self) -> None:
        self._proven = True

    def cookie_address(self) -> str:
        return f"{self._reply_to[0]}:{self._reply_to[1]}"

    def with_reply_port(self, port: int) -> "UdpPeer":
        if port == self._server_port:
            raise ValueError(f"reply_port = {port} is the bridge's own port; give the port your host listens on")
        return UdpPeer(self._writer, self._source, self.max_packet, self.budget, self._server_port,
                       (self._source[0], port))


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
    """Datagrams in. asyncio hands on one datagram per event-loop turn; a block comes as tens of datagrams, so
    after each one the endpoint reads the others already waiting on its socket itself (up to ``UDP_DRAIN``)."""

    def __init__(self, server: "BridgeServer", sock: socket.socket | None = None):
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None
        self._sock = sock
        self._buffer = bytearray(UDP_READ_BYTES)
        self._view = memoryview(self._buffer)
        self.writer = _DatagramWriter(sock, server.bridge.counts)
        self._peers: dict[tuple, UdpPeer] = {}  # source address -> its peer (a block's datagrams share one)

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.writer.transport = transport
        self.address = transport.get_extra_info("sockname")[:2]

    def connection_lost(self, exc) -> None:
        self.writer.close()

    def datagram_received(self, data: bytes, addr) -> None:
        self._handle(data, addr)
        if self._sock is None:
            return
        for _ in range(UDP_DRAIN):
            if self.transport is None or self.transport.is_closing():
                return
            try:
                size, addr = self._sock.recvfrom_into(self._buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.error_received(e)
                return
            self._handle(bytes(self._view[:size]), addr)

    def _handle(self, data: bytes, addr) -> None:
        if addr[1] == self.address[1] and _is_own_address(addr[0], self.address[0]):
            return  # the bridge's own port: a forged source (answering it would make the bridge talk to itself)
        peer = self._peers.get(addr)
        if peer is None:
            if len(self._peers) >= MAX_UDP_PEERS:  # forget them all: a peer is cheap to make again
                self._peers.clear()
            settings = self.server.settings
            peer = self._peers[addr] = UdpPeer(self.writer, addr[:2], settings.udp_packet_bytes,
                                               ReplyBudget(settings.udp_reply_factor, self.server.bridge.counts),
                                               self.address[1])
        peer.budget.received += len(data)
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
        self.workers = Workers(runtime, batching, workers, self.settings.max_sessions)
        self.bridge = Bridge(self.workers, self.settings, str(model))
        self.connections: set[TcpConnection] = set()
        self.tcp_address: tuple | None = None
        self.udp_address: tuple | None = None
        self._tcp: asyncio.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._sweeper: asyncio.Task | None = None

    def make_room(self) -> bool:
        """Whether a new connection may be taken: while MAX_CONNECTIONS are open, the one without sessions that was
        quiet longest is closed for it; False when every open one has sessions. Connections closed already (they
        stay in ``connections`` until their connection_lost) neither count nor are closed again."""
        open_ = [c for c in self.connections if not c.transport.is_closing()]
        if len(open_) < MAX_CONNECTIONS:
            return True
        idle = [c for c in open_ if c.sessions == 0]
        if not idle:
            return False
        min(idle, key=TcpConnection.idle_since).close_for(f"making room for a new connection ({MAX_CONNECTIONS} "
                                                           "open, the limit)")
        return True

    async def _sweep(self) -> None:
        """Close connections that sent no whole packet within the handshake timeout, and those without sessions
        that sent nothing for the idle timeout."""
        s = self.settings
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = asyncio.get_running_loop().time()
            for c in list(self.connections):
                if c.transport is None or c.transport.is_closing():
                    continue
                if c.last_packet is None and now - c.opened_at > s.tcp_handshake_timeout_s:
                    c.close_for(f"no whole packet within {s.tcp_handshake_timeout_s:g} s")
                elif c.last_packet is not None and now - c.last_packet > s.tcp_idle_timeout_s and c.sessions == 0:
                    c.close_for(f"no session and nothing sent for {s.tcp_idle_timeout_s:g} s")

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
        self._udp, _ = await loop.create_datagram_endpoint(lambda: UdpEndpoint(self, sock), sock=sock)
        self.udp_address = sock.getsockname()[:2]
        self.bridge.start()
        self._sweeper = loop.create_task(self._sweep())

    def ready_line(self) -> str:
        runtime = self.workers.runtime
        return (f"lmdm bridge ready: tcp {self.tcp_address[0]}:{self.tcp_address[1]} (OSC 1.0 length-prefix or "
                f"1.1 SLIP), udp {self.udp_address[0]}:{self.udp_address[1]}; model {self.bridge.model or '-'} "
                f"({runtime.name}, {runtime.config.sample_rate} Hz); preset {self.settings.preset}; "
                f"batching {'on' if self.workers.batching else 'off'}; up to {self.settings.max_sessions} sessions")

    async def stop(self) -> None:
        """Stop listening, answer what is in flight, close every connection (their replies flushed)."""
        self._tcp.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.bridge.shutdown()
        closing = [c.closed for c in self.connections]
        for connection in list(self.connections):
            connection.transport.close()
        if closing:
            await asyncio.wait(closing, timeout=2.0)
        self._udp.close()
        await asyncio.get_running_loop().run_in_executor(None, self.workers.shutdown)


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
