"""Helpers shared by the benchmark scripts: the machine line and table printing."""

from __future__ import annotations

import os
import platform
from pathlib import Path

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
