"""The bridge's OSC namespace: requests parsed, replies built and read. No sockets."""
