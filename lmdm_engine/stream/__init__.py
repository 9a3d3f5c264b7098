"""Streaming on a Runtime: the Session a host holds per track, and generation."""
