"""The fused multi-step LIF kernel (``_lif_kernel.c``): built at first use, called through ctypes.

Why plain C + ctypes rather than ``torch.utils.cpp_extension``: the kernel needs no Torch API (it
works on contiguous float buffers), and a Torch extension includes ``torch/extension.h``, which typically
takes tens of seconds to compile, against 2.6 s measured for this file (build + load, loaded 2-core machine); numba would be a new dependency, and
Inductor does not fuse a sequential loop over T into one pass (measured: ``--compile`` 0.97x the eager
step, benchmarks/RESULTS.md §2b). ctypes releases the GIL during the call.

The shared library is compiled with the system C compiler into a cache directory
(``$SPIKEPRUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/spikeprune``, else ``~/.cache/spikeprune``),
keyed by a hash of the source, the flags and the compiler, under a file lock so concurrent first uses
build it once. ``SPIKEPRUNE_LIF_KERNEL`` chooses the path: ``auto`` (default: fused where it builds),
``fused`` (fail loudly if it cannot build) or ``eager`` (today's per-timestep PyTorch kernels).
Where it cannot build or load, ``auto`` warns once, in one line, and uses the eager kernels.

CUDA tensors always take the eager kernels (this is a CPU kernel; no GPU build exists yet).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

__all__ = ["kernel_mode", "load", "supports"]

_SOURCE = Path(__file__).with_name("_lif_kernel.c")
_VERSION = 1
# -O3 vectorises the inner loops; -ffp-contract=off forbids FMA contraction and, without -ffast-math,
# every operation rounds as IEEE single/double: the forward is bit-identical to the eager kernels.
# -march=native is safe because the library is built on, and cached for, the machine that runs it
# (the compiler's target triple and the CPU flags are part of the cache key).
_FLAGS = ["-O3", "-ffp-contract=off", "-fno-fast-math", "-fopenmp", "-fPIC", "-shared", "-std=c99"]
_SURROGATE_IDS = {"atan": 0, "sigmoid": 1, "triangle": 2, "rectangle": 3}

_lib: ctypes.CDLL | None = None
_failed: str | None = None


def kernel_mode() -> str:
    """``SPIKEPRUNE_LIF_KERNEL``: ``auto`` (default), ``fused`` or ``eager``."""
    mode = os.environ.get("SPIKEPRUNE_LIF_KERNEL", "auto").strip().lower() or "auto"
    if mode not in ("auto", "fused", "eager"):
        raise ValueError(f"SPIKEPRUNE_LIF_KERNEL must be auto, fused or eager; got {mode!r}")
    return mode


def _cache_dir() -> Path:
    if os.environ.get("SPIKEPRUNE_CACHE_DIR"):
        return Path(os.environ["SPIKEPRUNE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spikeprune"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


def _build(cc: str, target: Path, source: Path = _SOURCE) -> None:
    """Compile into ``target`` atomically (temp file + rename) so readers never see half a library."""
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = [*_FLAGS, *(["-march=native"] if _native_ok(cc) else [])]
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *flags, str(source), "-o", tmp, "-lm"], capture_output=True, text=True,
                              timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _native_ok(cc: str) -> bool:
    return sys.platform.startswith("linux") and os.uname().machine in ("x86_64", "aarch64")


def _library_path(cc: str, source: Path = _SOURCE, stem: str = "lif_kernel") -> Path:
    key = hashlib.sha256()
    key.update(source.read_bytes())
    key.update(" ".join(_FLAGS).encode())
    key.update(cc.encode())
    try:
        key.update(subprocess.run([cc, "-dumpmachine"], capture_output=True, text=True, timeout=30).stdout.encode())
        key.update(subprocess.run([cc, "-dumpfullversion"], capture_output=True, text=True, timeout=30).stdout.encode())
    except (OSError, subprocess.SubprocessError):
        pass
    key.update(_cpu_flags().encode())
    return _cache_dir() / f"{stem}_{key.hexdigest()[:16]}.so"


def build_library(source: Path, stem: str) -> ctypes.CDLL:
    """Compile ``source`` (once per source/flags/compiler/CPU, cached, under a file lock) and load it.

    Shared by every C kernel of the package (this LIF kernel, spikeprune/_event_kernel.c); raises on
    any build or load problem, callers decide how to fall back.
    """
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc/gcc) on PATH")
    path = _library_path(cc, source, stem)
    if not path.exists():
        import fcntl  # POSIX only; elsewhere the ImportError lands in the one-line fallback

        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent first uses: one builds, the rest wait
            try:
                if not path.exists():
                    _build(cc, path, source)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    # torch is imported, so its libgomp.so.1 is already loaded: the dynamic linker resolves ours to
    # the same OpenMP runtime (one thread pool, no oversubscription of the cores).
    return ctypes.CDLL(str(path))


def _load() -> ctypes.CDLL:
    lib = build_library(_SOURCE, "lif_kernel")
    if lib.lif_kernel_version() != _VERSION:
        raise RuntimeError(f"stale kernel library {lib._name}")
    i64, cint = ctypes.c_int64, ctypes.c_int
    vp = ctypes.c_void_p
    for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        fwd = getattr(lib, f"lif_forward_{suffix}")
        fwd.argtypes = [vp, vp, vp, i64, i64, real, real, real, cint, cint]
        fwd.restype = None
        bwd = getattr(lib, f"lif_backward_{suffix}")
        bwd.argtypes = [vp, vp, vp, i64, i64, real, real, real, cint, real, cint, cint]
        bwd.restype = cint
    return lib


def load(mode: str | None = None) -> ctypes.CDLL | None:
    """The loaded kernel library, or ``None`` where the eager kernels must be used.

    ``mode`` overrides ``SPIKEPRUNE_LIF_KERNEL``. In ``auto`` a build or load failure warns once
    (one line) and returns ``None``; in ``fused`` it raises.
    """
    global _lib, _failed
    mode = mode or kernel_mode()
    if mode == "eager":
        return None
    if _lib is None and _failed is None:
        try:
            _lib = _load()
        except Exception as exc:  # noqa: BLE001 - any build/load problem means: use the eager kernels
            _failed = f"{type(exc).__name__}: {exc}".replace("\n", " ")
            if mode == "auto":
                warnings.warn(f"spikeprune: fused LIF kernel unavailable ({_failed}); using the eager kernels",
                              RuntimeWarning, stacklevel=3)
    if _lib is None and mode == "fused":
        raise RuntimeError(f"SPIKEPRUNE_LIF_KERNEL=fused but the fused LIF kernel cannot be used: {_failed}")
    return _lib


def supports(x: torch.Tensor) -> bool:
    """Whether the fused kernel handles this input (CPU, float32/float64, at least [T, B])."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.dim() >= 2


def _real(dtype: torch.dtype):
    return ctypes.c_float if dtype == torch.float32 else ctypes.c_double


def forward(lib: ctypes.CDLL, x: torch.Tensor, beta: float, u_th: float, v_reset: float,
            keep_u: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Spikes and (if ``keep_u``) u, both ``[T, B, ...]`` like ``x``, in one pass over T."""
    x = x.contiguous()
    spikes = torch.empty_like(x)
    u = torch.empty_like(x) if keep_u else None
    T = x.shape[0]
    n = x.numel() // T if T else 0
    if x.numel():
        fn = lib.lif_forward_f32 if x.dtype == torch.float32 else lib.lif_forward_f64
        fn(x.data_ptr(), spikes.data_ptr(), u.data_ptr() if keep_u else None, T, n,
           beta, u_th, v_reset, int(keep_u), torch.get_num_threads())
    return spikes, u


def backward(lib: ctypes.CDLL, grad_spikes: torch.Tensor, u: torch.Tensor, beta: float, u_th: float,
             v_reset: float, surrogate: str, alpha: float, detach_reset: bool) -> torch.Tensor:
    """dL/dx ``[T, B, ...]`` from dL/ds and the saved u, in one pass backwards over T."""
    grad_spikes = grad_spikes.to(u.dtype).contiguous()
    grad_x = torch.empty_like(u)
    T = u.shape[0]
    n = u.numel() // T if T else 0
    if u.numel():
        fn = lib.lif_backward_f32 if u.dtype == torch.float32 else lib.lif_backward_f64
        rc = fn(grad_spikes.data_ptr(), u.data_ptr(), grad_x.data_ptr(), T, n, beta, u_th, v_reset,
                _SURROGATE_IDS[surrogate], alpha, int(detach_reset), torch.get_num_threads())
        if rc != 0:
            raise ValueError(f"fused LIF kernel: unknown surrogate {surrogate!r}")
    return grad_x
