"""Where a sweep's points run: local processes, or a Dask distributed cluster.

Either is a `concurrent.futures.Executor`; a point's function and its scenario go to
the worker, its files come back, so workers need simdl installed but not the output
folder. Dask (the `cluster` extra) is imported only when asked for.
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager

from simdl.errors import SimdlError

#: What `--cluster` takes, for messages.
ADDRESSES = ("a Dask scheduler's address (tcp://HOST:8786, tls://HOST:8786) or local:N "
             "(a LocalCluster of N workers on 127.0.0.1)")


@contextmanager
def executor(cluster: str | None = None, workers: int | None = None) -> Iterator[Executor]:
    """`workers` local processes (default: one per core), or the Dask cluster at
    `cluster` (`local:N` starts one of N single-threaded worker processes bound to
    loopback, closed on exit). Work not started is cancelled on the way out."""
    if cluster is None:
        with _processes((os.cpu_count() or 1) if workers is None else workers) as pool:
            yield pool
        return
    if workers is not None:
        raise SimdlError("--workers", workers, "local processes only; a cluster has its own "
                         "workers (local:N for N)")
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise SimdlError("--cluster", cluster, "Dask installed: pip install 'simdl[cluster]'"
                         ) from None
    if cluster.startswith("local:"):
        n = cluster.removeprefix("local:")
        if not (n.isdigit() and int(n) >= 1):
            raise SimdlError("--cluster", cluster, "local:N with N a whole number >= 1")
        with LocalCluster(n_workers=int(n), threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=None) as local, \
                Client(local) as client:
            yield client.get_executor()
        return
    try:
        client = Client(cluster, timeout="10s")
    except (OSError, ValueError) as err:
        raise SimdlError("--cluster", cluster, f"{ADDRESSES} ({err})") from None
    with client:
        yield client.get_executor()


@contextmanager
def _processes(n: int) -> Iterator[Executor]:
    """A pool of `n` processes forked from a fresh server that has imported simdl's
    sweep once (no threads inherited, no import per worker)."""
    if n < 1:
        raise SimdlError("--workers", n, "a whole number >= 1")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["simdl.sweep"])
    pool = ProcessPoolExecutor(max_workers=n, mp_context=context)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
