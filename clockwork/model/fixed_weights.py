"""Weights at fixed device addresses, so a CUDA graph captured once stays valid.

A CUDA graph bakes in every pointer its kernels were captured with, and a model's weights move
between weights-cache pages as they are evicted and reloaded. The CUDA virtual memory API
separates the two: each weights-cache page is a physical allocation (cuMemCreate), and every
model instance (a model id on a GPU) owns a virtual range of num_pages x page_size reserved
once (cuMemAddressReserve). LoadWeights maps the physical pages it was given onto the
instance's range in order (cuMemMap + cuMemSetAccess; only the slots whose page changed are
remapped) and copies the weights through that range. A graph captured over the range then
reads whichever physical pages hold the weights now: one graph per (instance, batch size).

`FixedAddressWeights` holds that bookkeeping over a small driver interface (`VmmDriver`): the
CUDA one below, or a fake one (tests, no GPU). It never decides placement: the worker runtime
chooses the pages, as for every backend.
"""
from __future__ import annotations


class VmmDriver:
    """The virtual-memory calls FixedAddressWeights needs (all sizes multiples of `granularity`)."""

    granularity: int = 2 << 20

    def create(self, size: int):
        """A physical allocation of `size` bytes; returns its handle."""
        raise NotImplementedError

    def reserve(self, size: int) -> int:
        """Reserve `size` bytes of virtual address space; returns its base address."""
        raise NotImplementedError

    def map(self, va: int, size: int, handle) -> None:
        """Map physical allocation `handle` at `va` and make it readable/writable by the device."""
        raise NotImplementedError

    def unmap(self, va: int, size: int) -> None:
        raise NotImplementedError

    def free_range(self, va: int, size: int) -> None:
        raise NotImplementedError

    def release(self, handle) -> None:
        raise NotImplementedError


class FixedAddressWeights:
    """The physical pages of one GPU's weights cache and the virtual range of each instance."""

    def __init__(self, driver: VmmDriver, page_size: int, total_pages: int):
        if page_size % driver.granularity:
            raise ValueError(f"page size {page_size} is not a multiple of the GPU's allocation "
                             f"granularity ({driver.granularity} bytes)")
        self.driver = driver
        self.page_size = page_size
        self.pages = [driver.create(page_size) for _ in range(total_pages)]
        self._ranges: dict = {}      # instance -> (base va, [physical page mapped per slot])

    def base(self, instance, num_pages: int) -> int:
        """The instance's fixed virtual base address (reserved at first use)."""
        r = self._ranges.get(instance)
        if r is None:
            va = self.driver.reserve(num_pages * self.page_size)
            r = self._ranges[instance] = (va, [None] * num_pages)
        return r[0]

    def place(self, instance, pages: list[int]) -> int:
        """Map cache pages `pages` (model page k -> pages[k]) onto the instance's range;
        returns its base address, the same at every call for this instance."""
        va = self.base(instance, len(pages))
        slots = self._ranges[instance][1]
        if len(slots) != len(pages):
            raise ValueError(f"instance {instance!r} has {len(slots)} pages, got {len(pages)}")
        ps = self.page_size
        for k, p in enumerate(pages):
            if slots[k] == p:
                continue
            if slots[k] is not None:
                self.driver.unmap(va + k * ps, ps)
            self.driver.map(va + k * ps, ps, self.pages[p])
            slots[k] = p
        return va

    def mapped(self, instance) -> list:
        """The cache page mapped at each slot of the instance's range (None: never mapped)."""
        r = self._ranges.get(instance)
        return list(r[1]) if r else []

    def forget(self, instance) -> None:
        """Unmap and free the instance's range (its graphs must be dropped first)."""
        r = self._ranges.pop(instance, None)
        if r is None:
            return
        va, slots = r
        for k, p in enumerate(slots):
            if p is not None:
                self.driver.unmap(va + k * self.page_size, self.page_size)
        self.driver.free_range(va, len(slots) * self.page_size)

    def close(self) -> None:
        for instance in list(self._ranges):
            self.forget(instance)
        for h in self.pages:
            self.driver.release(h)
        self.pages = []


class CudaVmmDriver(VmmDriver):
    """VmmDriver over the CUDA driver API (cuda-python), for device `device`. Needs the
    device's primary context current (the runtime API's cudaSetDevice does that)."""

    def __init__(self, device: int):
        try:
            from cuda.bindings import driver as cu
        except ImportError:
            from cuda import cuda as cu        # cuda-python < 12.6
        self.cu = cu
        self.device = device
        prop = cu.CUmemAllocationProp()
        prop.type = cu.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
        prop.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        prop.location.id = device
        self.prop = prop
        access = cu.CUmemAccessDesc()
        access.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        access.location.id = device
        access.flags = cu.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
        self.access = access
        self.granularity = int(self._check(cu.cuMemGetAllocationGranularity(
            prop, cu.CUmemAllocationGranularity_flags.CU_MEM_ALLOC_GRANULARITY_MINIMUM),
            "cuMemGetAllocationGranularity"))

    def _check(self, res, what):
        err = res[0]
        if err != self.cu.CUresult.CUDA_SUCCESS:
            raise RuntimeError(f"{what}: {err.name if hasattr(err, 'name') else err}")
        return res[1] if len(res) > 1 else None

    def create(self, size):
        return self._check(self.cu.cuMemCreate(size, self.prop, 0), "cuMemCreate")

    def reserve(self, size):
        return int(self._check(self.cu.cuMemAddressReserve(size, self.granularity, 0, 0),
                               "cuMemAddressReserve"))

    def map(self, va, size, handle):
        self._check(self.cu.cuMemMap(va, size, 0, handle, 0), "cuMemMap")
        self._check(self.cu.cuMemSetAccess(va, size, [self.access], 1), "cuMemSetAccess")

    def unmap(self, va, size):
        self._check(self.cu.cuMemUnmap(va, size), "cuMemUnmap")

    def free_range(self, va, size):
        self._check(self.cu.cuMemAddressFree(va, size), "cuMemAddressFree")

    def release(self, handle):
        self._check(self.cu.cuMemRelease(handle), "cuMemRelease")
