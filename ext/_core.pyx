# cython: language_level=3
"""limiter._core: the Cython kernels.

One extension module built from several include files, one per concept, so every
kernel shares the same ``Decision`` type, clock and key table without cross-module
C-API plumbing. Kernels do no I/O; time is integer nanoseconds from ``clock``.
"""

include "clock.pxi"
include "common.pxi"
include "decision.pxi"
include "keytable.pxi"
include "gcra.pxi"
include "windows.pxi"
include "concurrency.pxi"
include "queue.pxi"
include "reservoir.pxi"
include "adaptive.pxi"
include "sketch.pxi"
