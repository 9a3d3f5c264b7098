"""Sessions hosted for peers: the reply ledger, the per-session pump, worker threads and batching."""
