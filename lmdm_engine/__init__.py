"""LMDM engine: config, codec, denoiser, samplers, runtimes, the Session, presets, training and evaluation."""

import os

# numpy's OpenBLAS starts a thread per core for the codec's small matrix products: on a 2-core machine that doubled
# the CPU a Session used for no gain, and `lmdm process --jobs 2` ran 2.9 times slower (27.3x against 9.3x real
# time; docs/BENCHMARKS.md). It must be set before numpy loads; a setting of the caller's own wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
