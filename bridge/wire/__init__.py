"""Bytes: the OSC codec, TCP stream framing, audio blocks as chunks and back."""
