"""The bf16 check reads the CPU's flags."""

from __future__ import annotations

from pathlib import Path

from harness.core.runtime import cpu_bf16


def _with_cpuinfo(monkeypatch, text: str | None) -> bool:
    real = Path.read_text

    def read_text(self, *args, **kwargs):
        if str(self) == "/proc/cpuinfo":
            if text is None:
                raise OSError("no such file")
            return text
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    cpu_bf16.cpu_has_bf16.cache_clear()
    try:
        return cpu_bf16.cpu_has_bf16()
    finally:
        cpu_bf16.cpu_has_bf16.cache_clear()


def test_native_bf16_flags_are_found_and_others_are_not(monkeypatch) -> None:
    assert _with_cpuinfo(monkeypatch, "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert _with_cpuinfo(monkeypatch, "processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n")
    assert _with_cpuinfo(monkeypatch, "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n")
    assert not _with_cpuinfo(monkeypatch, "processor\t: 0\nflags\t\t: fpu avx2 avx512f\n")
    assert not _with_cpuinfo(monkeypatch, None)  # not Linux
