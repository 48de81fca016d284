"""The machine facts every report records: the CPU features that change featlab's timings and int8 / bf16 numbers."""

from __future__ import annotations

import io

import featlab.core.versions as versions


def test_hardware_records_the_cpu_features_that_change_speed_and_numerics(monkeypatch):
    cpuinfo = ("processor\t: 0\nmodel name\t: Test CPU 9000\n"
               "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n\nprocessor\t: 1\n")
    real_open = open
    monkeypatch.setattr(versions, "open", lambda path, *a, **k: io.StringIO(cpuinfo) if path == "/proc/cpuinfo"
                        else real_open(path, *a, **k), raising=False)
    hw = versions.hardware()
    assert hw["cpu"] == "Test CPU 9000"
    assert hw["cpu_features"] == ["avx2", "avx512f", "avx512_bf16"]  # no VNNI, no AMX bf16 / int8
    assert versions.describe_hardware(hw).startswith("Test CPU 9000 (avx2, avx512f, avx512_bf16), ")


def test_a_cpu_without_any_listed_feature_says_so_and_an_old_record_still_prints():
    line = versions.describe_hardware({"cpu": "Old", "cpu_features": [], "cores": 2, "torch_threads": 2, "gpu": None})
    assert line.startswith("Old (none of avx2/") and line.endswith("2 cores, torch threads 2, GPU: none")
    # a summary written before cpu_features existed
    assert versions.describe_hardware({"cpu": "Old", "cores": 2, "torch_threads": 2, "gpu": None}) == \
        "Old, 2 cores, torch threads 2, GPU: none"
