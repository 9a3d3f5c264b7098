"""The LMDM OSC bridge: DAWs, Pedalboard scripts and any OSC host push audio blocks in and get processed blocks
back (protocol: bridge/PROTOCOL.md). Layers, each importing only those before it: ``wire`` (the OSC codec, TCP
framing, audio blocks as chunks), ``protocol`` (the namespace: requests, replies), ``hosting`` (the transport
peer interface, the exactly-once reply ledger, hosted sessions, worker threads and batching), ``server`` (dispatch
and the TCP and UDP transports); ``client`` (BridgeClient, BridgeEffect) and ``cli`` (``lmdm serve``) on top."""

import lmdm_engine  # noqa: F401  (first: it keeps numpy's BLAS to one thread, which must be set before numpy loads)

from .client import BlockResult, BridgeClient, BridgeEffect, BridgeError, OpenInfo
from .protocol.namespace import BlockFlag, ErrorCode
from .server.dispatch import BridgeSettings
from .server.transports import BridgeServer, ServerThread

__all__ = ["BridgeClient", "BridgeEffect", "BridgeError", "BlockResult", "OpenInfo", "BridgeSettings", "BlockFlag",
           "ErrorCode", "BridgeServer", "ServerThread"]
