"""CLI for real models: `cw zoo build`, `cw check-model`, `cw profile check|model`.

Importing this module is cheap (no TVM, no CUDA): each command imports what it drives when it
runs, so the controller and client paths never load TVM.
"""
from __future__ import annotations

import os
import resource
from pathlib import Path

import click

from ..percentiles import percentile

CTX = {"help_option_names": ["-h", "--help"]}


def _pct(xs, q) -> int:
    return int(percentile(xs, q))


# ---------------------------------------------------------------------------------------------
# cw zoo build

@click.group("zoo", context_settings=CTX)
def zoo_group():
    """Make model directories."""


@zoo_group.command("build", context_settings=CTX)
@click.option("--out", "-o", default=None, help="Zoo directory [default: $CLOCKWORK_MODEL_DIR or ./zoo].")
@click.option("--model", "-m", "models", multiple=True,
              help="Model to build (repeatable) [default: mlp, tinycnn, resnet18/34/50/101].")
@click.option("--target", "-t", type=click.Choice(["llvm", "cuda"]), default="cuda", show_default=True,
              help="llvm: CPU backend; cuda: GPU backend (cross-compiles where there is no GPU).")
@click.option("--arch", default="sm_90", show_default=True, help="CUDA architecture (H100/H200: sm_90).")
@click.option("--batch-sizes", default="1,2,4,8,16", show_default=True, help="Compiled batch sizes.")
@click.option("--page-size", default=16 * 1024 * 1024, show_default=True, type=click.IntRange(4096),
              help="Weights-cache page size the weights are laid out for (must match the worker).")
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default=None,
              help="Weights/compute dtype [default: float16 for cuda (tensor cores, float32 "
                   "accumulation), float32 for llvm]. Inputs and outputs stay float32.")
@click.option("--layout", type=click.Choice(["NHWC", "NCHW"]), default=None,
              help="Activation layout inside the model [default: NHWC for cuda float16, else "
                   "NCHW]. Inputs are NCHW either way.")
@click.option("--conv", type=click.Choice(["cudnn", "tvm"]), default=None,
              help="Who runs the convolutions [default: cudnn for cuda float16 NHWC, else tvm]: "
                   "cudnn calls cuDNN through clockwork's small library, which the worker loads "
                   "(bundles carry it); tvm compiles them with TVM's schedules.")
@click.option("--force", is_flag=True, help="Rebuild even what is up to date.")
def zoo_build_command(out, models, target, arch, batch_sizes, page_size, seed, dtype, layout, conv,
                      force):
    """Compile models (TVM) into model directories: weights.bin, <target>.so, model.json.

    Cached: a model whose definition, weights and target are unchanged is skipped. CUDA code is
    verified to be compiled (a fatbin in the .so); a model without it is refused.
    """
    from ..config import model_dir
    from . import build, nets
    try:
        bs = build.parse_batch_sizes(batch_sizes)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--batch-sizes") from None
    target_dir = model_dir(out)
    names = list(models) or list(nets.NAMES)
    try:
        build.target_key(target, arch if target == "cuda" else None)
    except build.BuildError as e:
        raise click.BadParameter(str(e), param_hint="--arch") from None
    where = "llvm (CPU)" if target == "llvm" else f"CUDA {arch}"
    dtype = dtype or build.default_dtype(target)
    layout = layout or build.default_layout(target, dtype)
    conv = conv or build.default_conv(target, dtype, layout)
    click.echo(f"Building {len(names)} model(s) for {where}, {dtype} {layout}, convs by {conv}, "
               f"into {target_dir}")
    try:
        build.build_zoo(names, target_dir, target, arch if target == "cuda" else None, bs, page_size,
                        seed, force, log=lambda m: click.echo(m), dtype=dtype, layout=layout,
                        conv=conv)
    except build.BuildError as e:
        raise click.ClickException(str(e)) from None


def _attach_import_command() -> None:
    """`cw zoo import` (ONNX) lives in clockwork.model.onnx_import."""
    from .onnx_import import zoo_import_command
    zoo_group.add_command(zoo_import_command)


_attach_import_command()


# ---------------------------------------------------------------------------------------------
# cw check-model / cw profile model

def _open(path: str, backend: str, gpu: int):
    """(backend, host model) for one model directory, with a weights cache just big enough;
    a CUDA backend in the worker's modes ([worker] cuda_graphs / cuda_gate, or their
    environment variables), so the times are the ones the worker will see."""
    from .backend import BackendUnavailable, LoadError, backend_class
    from .format import ModelFormatError, load_spec
    try:
        spec = load_spec(path)
    except ModelFormatError as e:
        raise click.ClickException(str(e)) from None
    pages = max(1, spec.num_pages(spec.page_size))
    try:
        kw = {}
        if backend == "cuda":
            from ..config import ConfigError, load_config
            from .cuda import env_flag
            try:
                cfg = load_config()["worker"]
            except ConfigError as e:
                raise click.ClickException(str(e)) from None
            kw = {"gpus": [gpu], "graphs": env_flag("CLOCKWORK_CUDA_GRAPHS", cfg["cuda_graphs"]),
                  "gate": env_flag("CLOCKWORK_CUDA_GATE", cfg["cuda_gate"])}
        dev = backend_class(backend)(spec.page_size, pages, 64 << 20, 64 << 20, **kw)
        hm = dev.load_host_model(spec)
    except (BackendUnavailable, LoadError) as e:
        raise click.ClickException(str(e)) from None
    return dev, hm, spec


@click.command("check-model", context_settings=CTX)
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--backend", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True)
@click.option("--gpu", default=0, show_default=True, help="GPU to check on.")
@click.option("--runs", default=20, show_default=True, type=click.IntRange(1, 100000))
def check_model_command(path, backend, gpu, runs):
    """Load a model on a device; print sizes, pages, weight-transfer and exec times."""
    dev, hm, spec = _open(path, backend, gpu)
    try:
        prof = dev.profile(hm, 0, runs)
    finally:
        pass
    name = dev.gpu_names()[0]
    click.echo(f"Model {spec.name} ({spec.path}) on {name} [{dev.name} backend]")
    click.echo(f"  input  {list(spec.input_shape)} {spec.input_dtype} = {spec.input_size} bytes per item")
    click.echo(f"  output {list(spec.output_shape)} {spec.output_dtype} = {spec.output_size} bytes per item")
    click.echo(f"  weights {spec.weights_size} bytes ({spec.weights_size / 2**20:.1f} MiB), "
               f"{spec.dtype}, {len(spec.tensors)} tensors in {len(spec.pages)} pages of "
               f"{spec.page_size // 2**20} MiB")
    ld = prof["load"]
    gbps = spec.weights_size / (_pct(ld, 50) / 1e9) / 1e9 if _pct(ld, 50) else 0
    click.echo(f"  weights transfer: p50 {_pct(ld, 50) / 1e6:.3f} ms, p99 {_pct(ld, 99) / 1e6:.3f} ms "
               f"({gbps:.1f} GB/s)")
    click.echo("  batch  exec p50 ms  exec p99 ms  p99/p50  items/s")
    for b in spec.batch_sizes:
        p50, p99 = _pct(prof[b], 50), _pct(prof[b], 99)
        click.echo(f"  {b:>5}  {p50 / 1e6:>11.3f}  {p99 / 1e6:>11.3f}  {p99 / p50:>7.3f}  {b / (p50 / 1e9):>7.0f}")
    hm.close()
    dev.close()


@click.group("profile", context_settings=CTX)
def profile_group():
    """Environment checks (`check`) and model profiling (`model`)."""


@profile_group.command("model", context_settings=CTX)
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--backend", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True)
@click.option("--gpu", default=0, show_default=True)
@click.option("--runs", default=100, show_default=True, type=click.IntRange(3, 100000))
@click.option("--print-toml", is_flag=True, help="Also print a clockwork/conf/profiles entry per model.")
def profile_model_command(paths, backend, gpu, runs, print_toml):
    """Measure models on their device and write each one's measurements.json."""
    from .format import write_measurements
    for path in paths:
        dev, hm, spec = _open(path, backend, gpu)
        prof = dev.profile(hm, 0, runs)
        name = dev.gpu_names()[0]
        exec_ns = {b: _pct(prof[b], 50) for b in spec.batch_sizes}
        p99 = {b: _pct(prof[b], 99) for b in spec.batch_sizes}
        load = _pct(prof["load"], 50)
        write_measurements(path, name, load, exec_ns, p99)
        click.echo(f"{spec.name}: weights {load / 1e6:.3f} ms; exec p50 "
                   + ", ".join(f"b{b} {exec_ns[b] / 1e6:.3f}" for b in spec.batch_sizes)
                   + f" ms -> {Path(path) / 'measurements.json'}")
        if print_toml:
            click.echo(profile_toml(spec, load, exec_ns, p99))
        hm.close()
        dev.close()


def profile_toml(spec, load_ns, exec_ns, p99) -> str:
    """A clockwork/conf/profiles/<device>.toml entry for one measured model."""
    def table(d):
        return "{ " + ", ".join(f"{b} = {v}" for b, v in sorted(d.items())) + " }"
    return (f"[models.{spec.name}]\n"
            f"input = {{ shape = {list(spec.input_shape)}, dtype = \"{spec.input_dtype}\" }}\n"
            f"output = {{ shape = {list(spec.output_shape)}, dtype = \"{spec.output_dtype}\" }}\n"
            f"weights_size = {spec.weights_size}\n"
            f"weights_load_ns = {load_ns}\n"
            f"exec_ns = {table(exec_ns)}\n"
            f"exec_p99_ns = {table(p99)}\n")


# ---------------------------------------------------------------------------------------------
# cw profile check

def environment_checks() -> list[tuple[str, bool | None, str]]:
    """The original's `profile check`: (what, ok (None: unknown), detail). Reads only."""
    out = []
    v = os.environ.get("CUDA_CACHE_DISABLE")
    out.append(("CUDA_CACHE_DISABLE=1", v == "1", f"is {v!r}" if v is not None else "unset"))

    def lim(name, res, want):
        soft, _ = resource.getrlimit(res)
        ok = soft == resource.RLIM_INFINITY if want == "unlimited" else \
            (soft == resource.RLIM_INFINITY or soft >= want)
        shown = "unlimited" if soft == resource.RLIM_INFINITY else str(soft)
        out.append((f"ulimit {name} >= {want}", ok, f"is {shown}"))
    lim("nofile", resource.RLIMIT_NOFILE, 65535)
    lim("memlock", resource.RLIMIT_MEMLOCK, "unlimited")
    lim("rtprio", resource.RLIMIT_RTPRIO, "unlimited")
    try:
        n = int(Path("/proc/sys/vm/max_map_count").read_text())
        out.append(("vm.max_map_count >= 10000000", n >= 10_000_000, f"is {n}"))
    except (OSError, ValueError):
        out.append(("vm.max_map_count >= 10000000", None, "unreadable"))
    try:
        import pynvml
        pynvml.nvmlInit()
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            try:
                mode = pynvml.nvmlDeviceGetComputeMode(h)
                out.append((f"GPU {i} compute mode exclusive-process",
                            mode == pynvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS,
                            {0: "default", 2: "prohibited", 3: "exclusive process"}.get(mode, str(mode))))
            except pynvml.NVMLError as e:
                out.append((f"GPU {i} compute mode exclusive-process", None, str(e)))
            try:
                pm = pynvml.nvmlDeviceGetPersistenceMode(h)
                out.append((f"GPU {i} persistence mode on", pm == 1, "on" if pm == 1 else "off"))
            except pynvml.NVMLError as e:
                out.append((f"GPU {i} persistence mode on", None, str(e)))
            try:
                sm = pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)
                mx = pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)
                out.append((f"GPU {i} SM clock (info)", None, f"{sm} MHz now, max {mx} MHz"))
            except pynvml.NVMLError:
                pass
    except Exception as e:   # no pynvml or no driver
        out.append(("GPU settings (NVML)", None, f"not readable: {e}"))
    return out


@profile_group.command("check", context_settings=CTX)
def profile_check_command():
    """Check the environment as the original did. Reports only: changes nothing."""
    bad = 0
    for what, ok, detail in environment_checks():
        mark = "ok " if ok else ("?? " if ok is None else "NO ")
        bad += ok is False
        click.echo(f"  [{mark}] {what:<40} {detail}")
    click.echo(f"{bad} check(s) not met" if bad else "all checks met")
    click.echo("(reporting only: fix with ulimit/sysctl/nvidia-smi as root if you need to)")
