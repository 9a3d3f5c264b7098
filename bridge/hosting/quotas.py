"""What each peer (one TCP connection, or one UDP source address) may hold of the bridge, and the bridge in all:
sessions, bytes of audio in flight, queued blocks, and compute. No sockets, no event loop: hosted.py and the
dispatcher call it from the event loop.

Compute is counted in *model passes per latent frame*: a block costs ``steps x passes x channels x frames`` (passes
2 with classifier-free guidance, frames the model frames the block fills), and a session's *load* is
``steps x passes x channels``, the passes each model frame of its audio takes (its share of the machine when it
streams in real time). A block over ``block_cost`` is refused when the session opens or changes parameters, and
so is a session that would take its peer's or the bridge's load over the limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lmdm_bridge.protocol.namespace import ErrorCode, ProtocolError
from lmdm_engine.core.config import ModelConfig
from lmdm_engine.stream.params import SessionParams


def passes(params: SessionParams) -> int:
    return 2 if params.guidance > 1.0 else 1


def session_load(params: SessionParams, channels: int) -> int:
    """Model passes per latent frame of the session's audio."""
    return params.steps * passes(params) * channels


def block_cost(params: SessionParams, channels: int, frames: int, sample_rate: int, config: ModelConfig) -> int:
    """Model passes a block of ``frames`` host frames asks for, at most."""
    model_frames = math.ceil(frames * config.sample_rate / sample_rate / config.hop)
    return session_load(params, channels) * model_frames


@dataclass
class Limits:
    """The quotas; per peer unless the name says the bridge. Each is the ``BridgeSettings`` field ``max_<name>``
    (server/dispatch.py), which holds the defaults and checks them."""

    sessions: int  # the bridge's sessions, closing ones included
    peer_sessions: int
    peer_bytes: int  # bytes of audio from the first chunk of a block until its reply leaves
    bytes: int  # the bridge's
    peer_queued_blocks: int  # blocks waiting to be processed, all of a peer's sessions together
    block_cost: int  # model passes of one block
    peer_load: int
    load: int  # the bridge's


@dataclass
class Usage:
    sessions: int = 0
    bytes: int = 0
    queued: int = 0
    load: int = 0


class Quotas:
    """The usage of every peer with a live session, and of the bridge."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.total = Usage()
        self._peers: dict[tuple, Usage] = {}

    def usage(self, peer_key: tuple) -> Usage:
        return self._peers.get(peer_key) or Usage()

    def check_cost(self, params: SessionParams, channels: int, frames: int, sample_rate: int, config: ModelConfig,
                   session: str) -> None:
        cost = block_cost(params, channels, frames, sample_rate, config)
        if cost > self.limits.block_cost:
            raise ProtocolError(ErrorCode.OVER_QUOTA, (
                f"a block of {frames} frames at {sample_rate} Hz x {channels} channels with steps={params.steps} "
                f"and guidance={params.guidance:g} costs {cost} model passes; the bridge takes at most "
                f"{self.limits.block_cost} a block: use fewer steps, guidance 1, or shorter blocks (buffer_frames)"),
                session)

    def claim(self, peer_key: tuple, session: str, load: int) -> "Claim":
        """A new session's share; raises ProtocolError when a limit would be passed."""
        peer, limits = self.usage(peer_key), self.limits
        if self.total.sessions >= limits.sessions:
            raise ProtocolError(ErrorCode.TOO_MANY_SESSIONS, f"the bridge already serves {self.total.sessions} "
                                                             f"sessions (its limit, closing ones included)", session)
        if peer.sessions >= limits.peer_sessions:
            raise ProtocolError(ErrorCode.TOO_MANY_SESSIONS, f"this connection or address already has "
                                                             f"{peer.sessions} sessions (the limit per peer)", session)
        self._check_load(peer, load, session)
        self._peers[peer_key] = peer
        for usage in (peer, self.total):
            usage.sessions += 1
            usage.load += load
        return Claim(self, peer_key, peer, load)

    def _check_load(self, peer: Usage, extra: int, session: str) -> None:
        limits = self.limits
        if peer.load + extra > limits.peer_load:
            raise ProtocolError(ErrorCode.OVER_QUOTA, (
                f"load {extra} (steps x passes x channels) would take this peer to {peer.load + extra}, over its "
                f"limit of {limits.peer_load}"), session)
        if self.total.load + extra > limits.load:
            raise ProtocolError(ErrorCode.OVER_QUOTA, (
                f"load {extra} (steps x passes x channels) would take the bridge to {self.total.load + extra}, over "
                f"its limit of {limits.load}"), session)

    def _forget(self, peer_key: tuple, peer: Usage) -> None:
        if peer.sessions == 0 and self._peers.get(peer_key) is peer:
            del self._peers[peer_key]


class Claim:
    """One session's share of its peer's and the bridge's quotas, given back whole by ``release``."""

    def __init__(self, quotas: Quotas, peer_key: tuple, peer: Usage, load: int):
        self._quotas, self._key, self._peer = quotas, peer_key, peer
        self.load, self.bytes, self.queued = load, 0, 0
        self._released = False

    def _both(self):
        return (self._peer, self._quotas.total)

    def change_load(self, load: int, session: str, force: bool = False) -> None:
        """Raises ProtocolError (unless ``force``) when the new load would pass a limit."""
        if not force and load > self.load:
            self._quotas._check_load(self._peer, load - self.load, session)
        for usage in self._both():
            usage.load += load - self.load
        self.load = load

    def take_bytes(self, n: int, session: str, seq: int) -> None:
        limits, peer, total = self._quotas.limits, self._peer, self._quotas.total
        if peer.bytes + n > limits.peer_bytes or total.bytes + n > limits.bytes:
            whose, held, limit = (("this peer", peer.bytes, limits.peer_bytes) if peer.bytes + n > limits.peer_bytes
                                  else ("the bridge", total.bytes, limits.bytes))
            raise ProtocolError(ErrorCode.OVER_QUOTA, (
                f"a block of {n} bytes would take {whose} over {limit} bytes of audio in flight ({held} held); "
                f"wait for replies before sending more"), session, seq)
        self._add(bytes_=n)

    def free_bytes(self, n: int) -> None:
        self._add(bytes_=-n)

    def add_queued(self, n: int) -> None:
        self._add(queued=n)

    def queued_excess(self) -> int:
        """Blocks queued by this peer over its limit."""
        return max(0, self._peer.queued - self._quotas.limits.peer_queued_blocks)

    def _add(self, bytes_: int = 0, queued: int = 0) -> None:
        if self._released:
            return
        self.bytes += bytes_
        self.queued += queued
        for usage in self._both():
            usage.bytes += bytes_
            usage.queued += queued

    def release(self) -> None:
        """Give everything back (the session is finished)."""
        if self._released:
            return
        self._add(bytes_=-self.bytes, queued=-self.queued)
        for usage in self._both():
            usage.sessions -= 1
            usage.load -= self.load
        self._released = True
        self._quotas._forget(self._key, self._peer)
