"""Training beside the stream (core and runtime only): data, corpus, captions, the stages, evaluation."""
