"""Where a training step's paged outputs live, and the copy engine that moves them (SPEC section 5).

On the CPU a pageout writes the output's raw bytes to a file in a temporary
directory and a pagein reads them back into a new tensor, on one background
thread (one transfer at a time, in schedule order, as ``edgeplan-schedule/3``
says): compute goes on meanwhile.  The step waits where the format says an op
waits: :meth:`Pager.settle` before an op reads a paged-in output and before a
``free`` of an output being written.  On CUDA the copies go to pinned host
memory and are synchronous.  The executor (:mod:`planner.torch.executor`)
calls :meth:`Pager.pageout`, :meth:`Pager.pagein`, :meth:`Pager.settle`,
:meth:`Pager.drop` and :meth:`Pager.close`.
"""

import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from planner.torch.inputs import require_torch

torch = require_torch()

__all__ = ["Pager"]


def _raw(t):
    """A contiguous CPU tensor's bytes as a numpy array sharing its memory."""
    return t.detach().reshape(-1).view(torch.uint8).numpy()


class Pager:
    """A step's paged outputs and its copy engine.

    The directory is made at the first pageout and removed by :meth:`close`
    (the step calls it when it ends, also on an error or an interrupt), and
    by its finalizer should the step be dropped before its backward.  A file
    holds the tensor's raw bytes, written from and read into the tensor's own
    memory (no copy in between, so a pageout allocates nothing and a pagein
    exactly the output, at the pagein).  ``seconds`` sums the time the copy
    engine spent on transfers; ``waited`` the time the step stood still for it.
    """

    def __init__(self, device):
        self.device = device
        self.dir = None
        self.copies = {}  # layer -> (path or pinned tensor, shape, dtype)
        self.pending = {}  # layer -> the future of its latest transfer
        self.engine = None  # one worker thread: one transfer at a time, in order
        self.seconds = 0.0
        self.waited = 0.0
        self.pageouts = 0
        self.pageins = 0

    @property
    def path(self):
        """The temporary directory (None before the first pageout or after close)."""
        return None if self.dir is None else self.dir.name

    def _submit(self, i, job, tensors):
        """Run ``job(tensors)`` on the engine; ``tensors`` (a fresh list) is emptied when it is done.

        The engine's work item outlives the transfer: the worker thread lets it go
        only when it runs again, after :meth:`settle` has returned, so a job that
        kept its tensors would keep a dropped record or a freed output in memory
        for a while after the step let it go.
        """
        if self.engine is None:
            self.engine = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeplan-pager")
        self.pending[i] = self.engine.submit(self._timed, job, tensors)

    def _timed(self, job, tensors):
        t0 = time.perf_counter()
        try:
            job(tensors)
        finally:
            tensors.clear()  # before the future is done (see _submit)
        self.seconds += time.perf_counter() - t0  # only the engine's thread adds here

    def pageout(self, i, y):
        """Start writing ``y`` (layer ``i``'s output) out; ``y`` stays referenced until written."""
        self.pageouts += 1
        if self.device.type == "cuda":
            t0 = time.perf_counter()
            host = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
            host.copy_(y)
            torch.cuda.synchronize(self.device)
            self.copies[i] = (host, y.shape, y.dtype)
            self.seconds += time.perf_counter() - t0
            return
        if self.dir is None:
            self.dir = tempfile.TemporaryDirectory(prefix="edgeplan-paging-")
        path = os.path.join(self.dir.name, f"{i}.bin")
        self.copies[i] = (path, y.shape, y.dtype)

        def write(held):
            with open(path, "wb") as f:
                f.write(memoryview(_raw(held[0])))

        self._submit(i, write, [y])

    def pagein(self, i):
        """A new tensor that layer ``i``'s output is being read into (:meth:`settle` before reading it)."""
        self.pageins += 1
        where, shape, dtype = self.copies[i]
        y = torch.empty(shape, dtype=dtype, device=self.device)
        if self.device.type == "cuda":
            t0 = time.perf_counter()
            y.copy_(where)
            torch.cuda.synchronize(self.device)
            self.seconds += time.perf_counter() - t0
            return y

        def read(held):
            view = memoryview(_raw(held[0]))
            with open(where, "rb") as f:
                got = f.readinto(view)
            if got != view.nbytes:
                raise OSError(f"paged file {where}: read {got} of {view.nbytes} bytes")

        self._submit(i, read, [y])
        return y

    def pageout_record(self, i, tensors):
        """Start writing layer ``i``'s record (``tensors``, kept referenced until written) out.

        The record's copy is kept under the key ``("record", i)``, beside the
        outputs' (docs/format.md, "Paging backward records").
        """
        key = ("record", i)
        self.pageouts += 1
        metas = [(t.shape, t.dtype) for t in tensors]
        if self.device.type == "cuda":
            t0 = time.perf_counter()
            hosts = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t) for t in tensors]
            torch.cuda.synchronize(self.device)
            self.copies[key] = (hosts, metas)
            self.seconds += time.perf_counter() - t0
            return
        if self.dir is None:
            self.dir = tempfile.TemporaryDirectory(prefix="edgeplan-paging-")
        path = os.path.join(self.dir.name, f"record-{i}.bin")
        self.copies[key] = (path, metas)

        def write(held):
            with open(path, "wb") as f:
                f.writelines(memoryview(_raw(t)) for t in held)

        self._submit(key, write, list(tensors))

    def pagein_record(self, i):
        """New tensors that layer ``i``'s record is being read into (:meth:`settle` ``("record", i)`` first)."""
        key = ("record", i)
        self.pageins += 1
        where, metas = self.copies[key]
        tensors = [torch.empty(shape, dtype=dtype, device=self.device) for shape, dtype in metas]
        if self.device.type == "cuda":
            t0 = time.perf_counter()
            for t, host in zip(tensors, where):
                t.copy_(host)
            torch.cuda.synchronize(self.device)
            self.seconds += time.perf_counter() - t0
            return tensors

        def read(held):
            with open(where, "rb") as f:
                for t in held:
                    view = memoryview(_raw(t))
                    got = f.readinto(view)
                    if got != view.nbytes:
                        raise OSError(f"paged file {where}: read {got} of {view.nbytes} bytes")

        self._submit(key, read, list(tensors))
        return tensors

    def settle(self, i):
        """Wait for layer ``i``'s latest transfer (and raise its error, if any)."""
        future = self.pending.pop(i, None)
        if future is not None:
            t0 = time.perf_counter()
            future.result()
            self.waited += time.perf_counter() - t0

    def drop(self, i):
        """Forget layer ``i``'s copy (its backward ran: nothing reads it again); ``i`` may be a record's key."""
        self.settle(i)
        entry = self.copies.pop(i, None)
        if entry is not None and isinstance(entry[0], str):
            os.remove(entry[0])

    def close(self):
        """Wait for every transfer, then remove the copies (also after an error)."""
        try:
            for i in list(self.pending):
                self.settle(i)
        finally:
            self.pending.clear()
            if self.engine is not None:
                self.engine.shutdown(wait=True)
                self.engine = None
            self.copies.clear()
            if self.dir is not None:
                self.dir.cleanup()
                self.dir = None
