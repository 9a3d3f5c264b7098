"""The LMDM engine, in layers (README, Layout): core/ (the model), runtime/ (what runs it), stream/ (the Session,
generation), io/ (presets, chains, the effect, batch files), train/ (beside stream), cli/ (the lmdm command)."""

import os
import sys

# numpy's OpenBLAS starts a thread per core for the codec's small matrix products: on a 2-core machine that doubled
# the CPU a Session used for no gain, and `lmdm process --jobs 2` ran 2.9 times slower (27.3x against 9.3x real
# time; docs/BENCHMARKS.md). Between products spaced under ~0.1 s apart its threads busy-wait: a Session processing
# blocks kept one of them at 100% of a core, taking it from everything else. The variable only works before numpy
# loads; when a program imported numpy first, its OpenBLAS is limited through threadpoolctl. A caller's own
# OPENBLAS_NUM_THREADS wins.
if "OPENBLAS_NUM_THREADS" not in os.environ:
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    if "numpy" in sys.modules:
        from threadpoolctl import ThreadpoolController

        ThreadpoolController().select(internal_api="openblas").limit(limits=1)
