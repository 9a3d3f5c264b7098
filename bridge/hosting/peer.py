"""The transport interface: where a hosted session's replies go. The TCP and UDP transports (server/transports.py)
implement it; the hosting and dispatch layers only ever talk to a ``Peer``."""

from __future__ import annotations

import numpy as np

from lmdm_bridge.protocol.namespace import AUDIO, reply_address
from lmdm_bridge.wire.blocks import audio_messages
from lmdm_bridge.wire.osc import Message


class Peer:
    """Where a session's replies go (implemented by the transports)."""

    key: tuple  # identity that owns sessions: one TCP connection, or one UDP source address
    max_packet: int | None  # largest message the peer takes from us; None: any size (a block is one message)
    threadsafe_sends = False  # whether send_audio may be called from any thread (else only from the event loop)
    # whether a packet's source may be forged (UDP): then every request about a session must carry its cookie, and
    # replies stay within a small multiple of what the peer sent until it has proven its address
    spoofable = False

    def send(self, message: Message) -> None: ...

    def send_audio(self, session: str, seq: int, audio: np.ndarray, flags: int) -> None:
        """One block's ``/lmdm/audio/reply`` (split into chunks when ``max_packet`` is set). Transports override
        this to write the encoded packets without building messages first."""
        for message in audio_messages(reply_address(AUDIO), session, seq, audio, flags, self.max_packet):
            self.send(message)

    def set_congested(self, session: str, congested: bool) -> None:
        """A session of this peer has (or no longer has) many blocks waiting: a stream transport stops reading."""

    def prove_address(self) -> None:
        """The peer echoed a cookie sent to its address: it receives what is sent there (no more reply budget)."""

    def cookie_address(self) -> str:
        """What a cookie for this peer is bound to: the address its replies go to."""
        return repr(self.key)

    def with_reply_port(self, port: int) -> "Peer":
        """The same peer, answered on another port of its address (UDP hosts that listen on a fixed port); raises
        ValueError for a port the bridge will not send to."""
        return self
