"""Suite-wide settings.

One BLAS thread: the suite runs many small matmuls, which OpenBLAS threads slow
down on a loaded 2-core machine, and a fixed thread count keeps float sums in
one order so reruns match bit for bit.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
