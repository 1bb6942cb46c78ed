"""Where torch runs and at what precision: chosen once per job, logged with the reason.

`precision` is `auto`, `fp32`, `bf16` or `fp16` (config key `precision`, overridable per
encoder). `auto` picks bf16 on CUDA devices that support it, fp16 on older CUDA devices, and
on the CPU bf16 only where the CPU computes it natively (AVX512-BF16 or AMX); elsewhere bf16
is emulated and runs ~15x slower than float32 (measured: README, "Performance"), so `auto`
keeps full precision there. That CPU rule is for the encoders; the niche and survival models
(`workload="model"`) are small (d_model 64, batches of a few hundred) and stay in fp32 on the
CPU under `auto`: bf16 autocast made the niche teacher 2.1x slower even on an AMX Xeon (40 s vs
19 s, 2 epochs, 2026-12-01), its casts costing more than the small matmuls gain. fp32 on CUDA
uses TF32 matmuls.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names
# oneDNN's ISA caps below AVX512_CORE_BF16: with one of them set, bf16 runs emulated whatever the CPU
# has (how to make an AMX machine behave like an AVX2 one: README, "Performance")
ISA_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def pick_device(requested: str = "auto") -> torch.device:
    """`auto`: cuda when present, else cpu; otherwise the named device."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def cpu_native_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, and how that was found out.

    torch's own CPU feature probe (the one oneDNN's bf16 kernels dispatch on) comes first; the
    kernel's CPU flags are the fallback where a torch build lacks it.
    """
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        cap = os.environ.get(var, "")
        if cap.upper() in ISA_WITHOUT_BF16:
            return False, f"{var}={cap} keeps oneDNN below its bf16 kernels"
    probe = torch.cpu
    if hasattr(probe, "_is_avx512_bf16_supported"):
        found = [name for name, check in (("AVX512-BF16", probe._is_avx512_bf16_supported),
                                          ("AMX", getattr(probe, "_is_amx_tile_supported", lambda: False)))
                 if check()]
        return bool(found), f"torch CPU probe: {', '.join(found) if found else 'no AVX512-BF16, no AMX'}"
    flags = _cpuinfo_flags()
    found = [f for f in NATIVE_BF16_FLAGS if f in flags]
    return bool(found), f"/proc/cpuinfo flags: {', '.join(found) if found else 'no avx512_bf16, no amx_bf16'}"


def _cpuinfo_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


WORKLOADS = ("encoder", "model")


def resolve_precision(device: torch.device, requested: str = "auto", workload: str = "encoder") -> tuple[str, str]:
    """(precision, why) for `device` and `workload` ("encoder": a foundation/timm encoder,
    "model": the studies' small trained models); an explicit choice is kept as asked."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r}: one of {PRECISIONS}")
    if workload not in WORKLOADS:
        raise ValueError(f"workload {workload!r}: one of {WORKLOADS}")
    if requested != "auto":
        return requested, "set in the config"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported():
            return "bf16", f"auto: {name} supports bf16"
        return "fp16", f"auto: {name} has no bf16"
    if device.type == "cpu" and workload == "model":
        return "fp32", "auto: small model on the CPU (bf16 autocast costs more than it saves there)"
    if device.type == "cpu":
        native, how = cpu_native_bf16()
        return ("bf16", f"auto: native bf16 ({how})") if native else ("fp32", f"auto: bf16 would be emulated ({how})")
    return "fp32", f"auto: no reduced precision chosen for {device.type}"


@dataclass(frozen=True)
class Compute:
    """A device and the precision its models run at (autocast; fp32 disables it)."""

    device: torch.device
    precision: str = "fp32"
    reason: str = "default"

    def autocast(self):
        dtype = DTYPES[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16 training (a no-op at other precisions)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")


CPU = Compute(torch.device("cpu"))


def resolve(device: str = "auto", precision: str = "auto", threads: int | None = None,
            workload: str = "encoder") -> Compute:
    """The job's device and precision for `workload` (logged with the reason); `threads` caps
    torch's intra-op threads."""
    dev = pick_device(device)
    chosen, why = resolve_precision(dev, precision, workload)
    if threads:
        torch.set_num_threads(threads)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 paths (and fp32 ops under autocast)
        torch.backends.cudnn.allow_tf32 = True
    log.info("device %s, precision %s (%s), %d torch threads", dev, chosen, why, torch.get_num_threads())
    return Compute(dev, chosen, why)
