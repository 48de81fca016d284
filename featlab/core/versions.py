"""Library versions and environment facts recorded in every output."""

from __future__ import annotations

import datetime as _dt
import platform
from importlib import metadata

_PACKAGES = ("featlab", "torch", "torchvision", "scikit-learn", "numpy", "pillow", "onnxruntime", "onnx2torch")


def library_versions() -> dict[str, str]:
    """Return installed versions of the packages whose behaviour shapes featlab's numbers."""
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


#: CPU instruction sets that change featlab's timings or numbers: native bf16 (else ``auto`` precision is fp32 and
#: forced bf16 is emulated, several times slower) and VNNI (else int8 kernels saturate with 8-bit weights).
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def hardware() -> dict:
    """The machine numbers were measured on: CPU model, the :data:`CPU_FEATURES` it has (Linux), cores, torch
    threads, GPU if any."""
    import os

    import torch

    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # this process's
    return {"cpu": cpu, "cpu_features": [f for f in CPU_FEATURES if f in flags], "cores": cores,
            "torch_threads": torch.get_num_threads(), "gpu": gpu, "system": f"{platform.system()} {platform.machine()}"}


def describe_hardware(hw: dict) -> str:
    """One line for a report: ``AMD EPYC (avx2), 2 cores, torch threads 2, GPU: none``."""
    cpu, features = hw["cpu"], hw.get("cpu_features")
    if features is not None:  # absent from records written before it existed
        cpu += f" ({', '.join(features) or 'none of ' + '/'.join(CPU_FEATURES)})"
    return f"{cpu}, {hw['cores']} cores, torch threads {hw.get('torch_threads', '?')}, GPU: {hw.get('gpu') or 'none'}"
