"""Compiling TVM's CUDA source in pieces (clockwork.model.cuda_pieces): the pieces cover the
source exactly, the joined PTX is one valid module, and (where nvcc is installed) every
kernel's PTX is the one compiling the whole file gives."""
from __future__ import annotations

import re
import shutil

import pytest

from clockwork.model import cuda_pieces as cp

HEADER = '#include <cuda_fp16.h>\n#define uint unsigned int\n'


def _kernel(k: int, body_lines: int = 3) -> str:
    body = "".join(f"    out[i] = out[i] * {j + 2}.0f + in[i];\n" for j in range(body_lines))
    return (f'extern "C" __global__ void __launch_bounds__(128) k{k}_kernel(float* __restrict__ out, '
            f'float* __restrict__ in) {{\n  int i = blockIdx.x * 128 + threadIdx.x;\n'
            f'  if (i < {1000 + k}) {{\n{body}  }}\n}}\n\n')


def _source(n: int = 6) -> str:
    return HEADER + "".join(_kernel(k, 3 + k) for k in range(n))


def test_pieces_cover_the_source_and_each_has_the_header():
    code = _source()
    tail = code[len(HEADER):]
    pieces = cp.split_source(code, piece_bytes=700)
    assert len(pieces) > 2
    assert all(p.startswith(HEADER) for p in pieces)
    assert "".join(p[len(HEADER):] for p in pieces) == tail          # in order, nothing lost
    for p in pieces:                                                 # cut at kernel boundaries
        assert p[len(HEADER):].startswith(cp.KERNEL)
        assert len(p) <= 700 or p.count(cp.KERNEL) == 1


def test_small_source_stays_one_piece():
    code = _source()
    assert cp.split_source(code, piece_bytes=len(code)) == [code]
    assert cp.split_source(HEADER, piece_bytes=1) == [HEADER]


def _ptx(names, decl=".extern .shared .align 16 .b8 buf_dyn_shmem[];"):
    entries = "".join(f".visible .entry {n}(\n\t.param .u64 p\n)\n{{\n$L__BB0_1:\n\tret;\n}}\n"
                      for n in names)
    return f"//\n// Generated\n//\n\n.version 9.0\n.target sm_90\n.address_size 64\n\n{decl}\n{entries}"


def test_joined_ptx_has_one_header_and_each_declaration_once():
    joined = cp.join_ptx([_ptx(["a", "b"]), _ptx(["c"]), _ptx(["d"])])
    for directive in (".version", ".target", ".address_size"):
        assert len(re.findall(rf"^{re.escape(directive)}\b", joined, re.M)) == 1
    assert joined.count(".extern .shared .align 16 .b8 buf_dyn_shmem[];") == 1
    assert re.findall(r"\.entry (\w+)", joined) == ["a", "b", "c", "d"]
    assert joined.count("$L__BB0_1:") == 4          # labels are local to their function: kept


needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")


def _normalized(ptx: str) -> list[str]:
    ptx = re.sub(r"\$L__BB\d+_", "$L__BB_", ptx)
    return [line for line in ptx.splitlines() if line.strip() and not line.lstrip().startswith("//")]


@needs_nvcc
@pytest.mark.timeout(600)
def test_pieces_give_the_same_ptx_and_a_binary():
    pytest.importorskip("tvm")
    from tvm.support import nvcc
    from tvm.target import Target
    code = _source(8)
    with Target({"kind": "cuda", "arch": "sm_90"}):
        whole = bytes(nvcc.compile_cuda(code, target_format="ptx", compiler="nvcc")).decode()
        pieces = cp.split_source(code, piece_bytes=1500)
        assert len(pieces) > 2
        joined = cp.join_ptx([bytes(nvcc.compile_cuda(p, target_format="ptx", compiler="nvcc")).decode()
                              for p in pieces])
        assert _normalized(joined) == _normalized(whole)
        fatbin = cp.compile_cuda(code, piece_bytes=1500)
    assert len(fatbin) > 1000 and all(f"k{k}_kernel".encode() in fatbin for k in range(8))
