"""GPU compile pipeline of the zoo: TVM's CUDA pipeline with tensor-core schedules tried first.

TVM's default CUDA pipeline schedules every kernel with dlight's default rules. Its `Matmul`
rule hands float16 work to `MatmulTensorization` (WMMA 16x16x16, float32 accumulation) only
when every GEMM dimension is > 64, which leaves ResNet's stem, its 64-channel convs and the
7x7 stage at batch 1 on plain CUDA cores. `TensorCoresFirst` tries tensor cores for every
float16 conv/matmul whose GEMM dims (convs count as N*H*W x Cout x Cin*kh*kw) are all
>= MIN_TENSOR_CORE_DIM, padding to the 128x128 tiles, and leaves the rest (the MLP at batch 1,
the classifier of a ResNet at batch 1) to the default rules.

Imported only in the compiling child process (it imports TVM's compiler).
"""
from __future__ import annotations

import tvm
from tvm import relax, s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.gpu.base import GPUScheduleRule
from tvm.s_tir.dlight.gpu.matmul import (MatmulTensorization, get_in_out_dtypes, get_index_map,
                                         get_reduction_blocks)

MIN_TENSOR_CORE_DIM = 16


def gemm_dims(func: tirx.PrimFunc):
    """(M, N, K) of the GEMM a conv/matmul PrimFunc normalizes to, or None (not a GEMM or
    dynamic shapes)."""
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(get_root_block(sch))
    reductions = get_reduction_blocks(sch, blocks)
    if not reductions:
        return None
    main = reductions[0]
    maps = get_index_map(sch.get(main))
    if maps is None:
        return None
    matmul_map = maps[0]
    sch.reindex(main, ("read", 0))
    sch.reindex(main, ("read", 1))
    sch.reindex(main, ("write", 0))
    sch.transform_block_layout(main, matmul_map)
    extents = [iv.dom.extent for iv in sch.get(main).iter_vars[1:]]
    if len(extents) != 3 or not all(isinstance(e, tirx.IntImm) for e in extents):
        return None
    return tuple(int(e.value) for e in extents)


class TensorCoresFirst(GPUScheduleRule):
    """MatmulTensorization for every float16 GEMM large enough; None (next rule) otherwise."""

    stats = {"tensor_cores": 0, "other": 0}     # GEMM kernels seen (the build log reports them)

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        try:
            sch = s_tir.Schedule(func)
            reductions = get_reduction_blocks(sch, sch.get_child_blocks(get_root_block(sch)))
            if not reductions:
                return None
            in_dtype, out_dtype = get_in_out_dtypes(sch.get(reductions[0]))
            if in_dtype != "float16" or out_dtype not in ("float16", "float32"):
                return None
            dims = gemm_dims(func)
            if dims is None or min(dims) < MIN_TENSOR_CORE_DIM:
                TensorCoresFirst.stats["other"] += dims is not None
                return None
            sch = MatmulTensorization().apply(func, target, tunable)
            TensorCoresFirst.stats["tensor_cores" if sch is not None else "other"] += 1
            return sch
        except (tvm.TVMError, ValueError, AssertionError, AttributeError, IndexError):
            return None          # the rule does not fit this kernel: leave it to the defaults


def cuda_pipeline(target, tensor_cores: bool = True):
    """TVM's CUDA pipeline (relax.backend.cuda.pipeline) with TensorCoresFirst ahead of the
    default dlight rules."""
    from tvm.relax.backend.cuda import pipeline as cp

    rules = [TensorCoresFirst()] if tensor_cores else []
    rules += [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
              dl.gpu.Fallback()]
    legalize = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(), relax.transform.FuseOps(),
                relax.transform.FuseTIR(), dl.ApplyDefaultSchedule(*rules)]

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod, _ctx):
        with target:
            seq = tvm.transform.Sequential(cp.library_dispatch_passes(target) + legalize
                                           + cp.dataflow_lower_passes(target)
                                           + cp.finalize_passes(target))
            return seq(mod)
    return _pipeline
