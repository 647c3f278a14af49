"""The emulated GPU backend (the original's worker_dummy): no device, profiled durations.

Every op's completion time is known when it starts: LoadWeights takes the model's
weights_load_ns, an exec takes exec_ns of the padded batch, input/output copies take their bytes
at an emulated pinned host<->device rate plus a fixed launch cost. The runtime's executors keep
ops of one stream from overlapping, so emulated GPUs behave like serial devices. Outputs are
slices of one preallocated zero buffer: nothing is allocated per request.
"""
from __future__ import annotations

from ..transport.schema import GpuReading
from .backend import Backend, HostModel, LoadError, Op, Region
from .format import ModelSpec

H2D_BYTES_PER_S = 54e9      # pinned host->device, >= 8 MiB chunks (H200, tvm-and-gpu notes)
D2H_BYTES_PER_S = 50e9
COPY_LAUNCH_NS = 2_000      # cudaMemcpyAsync issue + completion overhead
SM_CLOCK_MHZ = 1980         # H200 max boost
MEM_CLOCK_MHZ = 2619
IDLE_TEMP_C = 32.0
BUSY_TEMP_C = 68.0


class EmulatedBackend(Backend):
    name = "emulated"
    emulated = True
    stable_outputs = True       # slices of a zero buffer nobody writes

    def __init__(self, num_gpus: int, page_size: int, total_pages: int, io_pool_size: int,
                 workspace_pool_size: int, device_name: str = "Emulated GPU",
                 memory_total: int = 141 * 1024 ** 3):
        super().__init__(page_size, total_pages, io_pool_size, workspace_pool_size)
        if num_gpus < 1:
            raise ValueError("an emulated worker needs at least one GPU")
        self._names = [f"{device_name} {i}" for i in range(num_gpus)]
        self._zeros = memoryview(bytearray(0))
        self._memory_total = memory_total
        # telemetry: exec busy ns accumulated since the last readings() call, per GPU
        self._busy = [0] * num_gpus
        self._temp = [IDLE_TEMP_C] * num_gpus
        self._last_readings = 0

    def gpu_names(self) -> list[str]:
        return self._names

    def gpu_clock_mhz(self, gpu: int) -> int:
        return SM_CLOCK_MHZ

    def readings(self, now: int) -> list[GpuReading]:
        """Utilization from emulated exec time since the last call; temperature follows it."""
        span = now - self._last_readings if self._last_readings else 0
        self._last_readings = now
        out = []
        for i in range(len(self._names)):
            util = min(1.0, self._busy[i] / span) if span > 0 else 0.0
            self._busy[i] = 0
            self._temp[i] += 0.2 * (IDLE_TEMP_C + util * (BUSY_TEMP_C - IDLE_TEMP_C) - self._temp[i])
            out.append(GpuReading(i, SM_CLOCK_MHZ, MEM_CLOCK_MHZ, round(self._temp[i]), 0,
                                  self._memory_total, round(util, 3)))
        return out

    def load_host_model(self, spec: ModelSpec) -> HostModel:
        if not spec.has_measurements:
            missing = [b for b in spec.batch_sizes if b not in spec.exec_ns]
            why = f"no exec time for batch sizes {missing}" if spec.weights_load_ns is not None \
                else "no measurements.json"
            raise LoadError(f"{spec.path}: {why}; the emulated worker needs profiled timings "
                            f"(cw profile model, or cw zoo emulated)")
        hm = HostModel(spec, self.page_size, {b: spec.exec_ns[b] for b in spec.batch_sizes},
                       spec.weights_load_ns)
        need = spec.batch_sizes[-1] * hm.output_size
        if need > len(self._zeros):
            self._zeros = memoryview(bytearray(need))
        return hm

    def load_weights(self, gpu: int, hm: HostModel, pages: list[int], now: int,
                     instance: int = -1) -> Op:
        d = hm.weights_load_ns
        return Op(now, now + d, d)

    def copy_input(self, gpu: int, hm: HostModel, batch_size: int, inputs: list, io: Region,
                   now: int) -> Op:
        d = COPY_LAUNCH_NS + int(batch_size * hm.input_size / H2D_BYTES_PER_S * 1e9)
        return Op(now, now + d, d)

    def execute(self, gpu: int, hm: HostModel, padded_batch: int, pages: list[int], io: Region,
                workspace: Region, now: int, instance: int = -1) -> Op:
        d = hm.exec_ns[padded_batch]
        self._busy[gpu] += d
        return Op(now, now + d, d)

    def copy_output(self, gpu: int, hm: HostModel, batch_size: int, io: Region, now: int) -> Op:
        n = batch_size * hm.output_size
        d = COPY_LAUNCH_NS + int(n / D2H_BYTES_PER_S * 1e9)
        return Op(now, now + d, d, self._zeros[:n])
