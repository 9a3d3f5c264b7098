"""The LMDM OSC bridge: DAWs, Pedalboard scripts and any OSC host push audio blocks in and get processed blocks
back (protocol: bridge/PROTOCOL.md). Layers, each usable alone: ``osc`` (codec), ``framing`` (TCP streams),
``blocks`` (audio chunks), ``protocol`` (namespace), ``dispatch``/``hosted`` (requests and sessions),
``engine``/``batching`` (where sessions run), ``server`` (sockets), ``client``."""

import lmdm_engine  # noqa: F401  (first: it keeps numpy's BLAS to one thread, which must be set before numpy loads)

from .client import BridgeClient, BridgeEffect, BridgeError, BlockResult, OpenInfo
from lmdm_bridge.server.dispatch import BridgeSettings
from lmdm_bridge.protocol.requests import BlockFlag, ErrorCode
from lmdm_bridge.server.transports import BridgeServer, ServerThread

__all__ = ["BridgeClient", "BridgeEffect", "BridgeError", "BlockResult", "OpenInfo", "BridgeSettings", "BlockFlag",
           "ErrorCode", "BridgeServer", "ServerThread"]
