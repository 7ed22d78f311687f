"""Suite-wide settings.

One BLAS thread: the suite runs many small matmuls, which OpenBLAS threads slow
down on a loaded 2-core machine, and a fixed thread count keeps float sums in
one order so reruns match bit for bit.

Test folders are not packages: each folder is put on the path, so a test imports
another folder's stand-ins by module name (`from test_engine import device`).
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
sys.path[:0] = sorted(str(p) for p in HERE.iterdir() if p.is_dir() and p.name != "__pycache__")
