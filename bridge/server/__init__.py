"""The server: request dispatch and the TCP and UDP transports."""
