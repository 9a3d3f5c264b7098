"""Helpers shared by the benchmark scripts: the machine line and table printing."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

import lmdm_engine  # noqa: F401  (before torch and numpy: the product's BLAS setting, one thread)
import torch


def machine() -> str:
    """CPU model, core count and torch version, e.g. 'AMD EPYC, 2 cores, torch 2.5.1'."""
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu or 'unknown CPU'}, {os.cpu_count()} cores, torch {torch.__version__}"


def print_table(headers: list[str], rows: list[list[str]], markdown: bool) -> None:
    """Rows of preformatted cells as aligned text, or as a markdown table."""
    if markdown:
        print("| " + " | ".join(headers) + " |")
        print("|" + "|".join(" --- " for _ in headers) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows)]
    for row in [headers, *rows]:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths)))


def run_measured(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident MiB of a child process. The peak is the child's own VmHWM, polled every
    10 ms: getrusage's ru_maxrss would count the pages a forked child shares with this (torch-laden) process."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    peak_kib = 0
    status = Path(f"/proc/{child.pid}/status")
    while child.poll() is None:
        try:
            hwm = [line for line in status.read_text().splitlines() if line.startswith("VmHWM:")]
            peak_kib = max(peak_kib, int(hwm[0].split()[1])) if hwm else peak_kib
        except (OSError, IndexError, ValueError):
            pass
        time.sleep(0.01)
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, command)
    return time.perf_counter() - start, peak_kib / 1024
