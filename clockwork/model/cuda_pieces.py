"""Compile TVM's CUDA source in pieces: nvcc's front end is superlinear in one file's size.

TVM hands nvcc one translation unit holding every kernel of a module. For the imported zoo
that is every batch size's kernels: DenseNet-121 is 7.4 MB of CUDA per batch size, 37 MB for
five, and cicc (nvcc's front end) takes 16.6 CPU-s for one batch size's 7.4 MB but 59.5 s for
two (BENCHMARKS.md, "Compiling the imported zoo"). Here the source is cut at kernel boundaries
into pieces of at most PIECE_BYTES, each piece is compiled to PTX with TVM's own nvcc flags,
the PTX files are joined (one header; module-scope declarations once) and ptxas makes one
binary of it. cicc compiles each kernel on its own, so every kernel's PTX is the one the
single file gives (tests/test_cuda_pieces.py compares them).

Used by the compiling child only (clockwork.model.build.compile_relax) with
TVM_CUDA_COMPILE_MODE=nvcc; anything unexpected falls back to TVM's one-file compile.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile

PIECE_BYTES = 2 << 20          # cicc is ~linear up to a few MB (2.3 CPU-s per MB)
KERNEL = 'extern "C" __global__'
_HEADER_DIRECTIVE = re.compile(r"^\s*\.(version|target|address_size)\b")


def split_source(code: str, piece_bytes: int = PIECE_BYTES) -> list[str]:
    """The source as pieces that each compile on their own: the common header (everything
    before the first kernel) followed by consecutive kernels up to piece_bytes. One piece if
    the source is small or has a single kernel."""
    first = code.find(KERNEL)
    if first < 0 or len(code) <= piece_bytes:
        return [code]
    header, rest = code[:first], code[first:]
    starts = [m.start() for m in re.finditer(re.escape(KERNEL), rest)] + [len(rest)]
    pieces, begin = [], 0
    for a, b in zip(starts, starts[1:]):
        if b - begin > piece_bytes and a > begin:          # close the piece before this kernel
            pieces.append(header + rest[begin:a])
            begin = a
    pieces.append(header + rest[begin:])
    return pieces


def join_ptx(ptx_files: list[str]) -> str:
    """One PTX module from several: the first file's header directives, every other line as
    it comes except repeated header directives and repeated identical module-scope
    declarations (a shared `.extern .shared` buffer, ...). Labels are local to their function."""
    out, seen_decls = [], set()
    for k, ptx in enumerate(ptx_files):
        depth = 0
        for line in ptx.splitlines():
            if depth == 0:
                if k and _HEADER_DIRECTIVE.match(line):
                    continue
                stripped = line.strip()
                if stripped.endswith(";") and stripped.startswith((".extern", ".global", ".const",
                                                                   ".shared", ".func", ".weak")):
                    if stripped in seen_decls:
                        continue
                    seen_decls.add(stripped)
            depth += line.count("{") - line.count("}")
            out.append(line)
    return "\n".join(out) + "\n"


def compile_cuda(code: str, piece_bytes: int = PIECE_BYTES) -> bytes:
    """What TVM's tvm_callback_cuda_compile returns in nvcc mode (a fatbin), made piece by
    piece when the source is large."""
    from tvm.support import nvcc
    pieces = split_source(code, piece_bytes)
    if len(pieces) == 1:
        return nvcc.compile_cuda(code, target_format="fatbin", compiler="nvcc")
    try:
        ptx = [bytes(nvcc.compile_cuda(p, target_format="ptx", compiler="nvcc")).decode()
               for p in pieces]
        return _ptx_to_fatbin(join_ptx(ptx))
    except (RuntimeError, subprocess.SubprocessError, OSError, UnicodeDecodeError):
        return nvcc.compile_cuda(code, target_format="fatbin", compiler="nvcc")


def _ptx_to_fatbin(ptx: str) -> bytes:
    """ptxas (through nvcc, with TVM's ptxas options) for the current target's arch."""
    from tvm.support import nvcc
    from tvm.target import Target
    arch = getattr(Target.current(allow_none=True), "arch", None) or "sm_90"
    sm = arch[3:]
    with tempfile.TemporaryDirectory() as d:
        src, out = os.path.join(d, "kernels.ptx"), os.path.join(d, "kernels.fatbin")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = ["nvcc", "--fatbin", "-gencode", f"arch=compute_{sm},code=sm_{sm}",
               f"--ptxas-options={','.join(nvcc._ptxas_option_flags())}", "-o", out, src]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"ptxas failed on the joined PTX:\n{r.stdout}{r.stderr}")
        with open(out, "rb") as f:
            return f.read()


def install() -> None:
    """Make TVM compile CUDA through compile_cuda (nvcc mode only; NVRTC is left alone)."""
    if os.environ.get("TVM_CUDA_COMPILE_MODE", "nvrtc").lower() != "nvcc":
        return
    import tvm_ffi
    import tvm.support.nvcc  # noqa: F401  (registers TVM's callback first: ours replaces it)
    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_cuda, override=True)
