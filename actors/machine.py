"""This machine as a run records it (the `machine` object of `autotune --json`, and the
machine inputs of the recipe hash): RAM, chip, OS, our version."""

from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import psutil

from macprovider.server.knob_values import GB

# The version of the autotune contract (cli/autotune.schema.json says what it covers). 0.4:
# ram_gb is in GB of 10^9 bytes, no longer GiB, so recipe hashes of 0.3 runs do not match.
SPEC_VERSION = "0.4"


@dataclass(frozen=True)
class Machine:
    # Total RAM in GB of 10^9 bytes, the unit of --memory-limit-gb, rounded to 0.01 GB: a
    # 24 GiB Mac has 25.77 GB (0.1 would print a 16 GiB Mac as 17.2, not the 17.18 an operator
    # compares a limit with). The recipe hash takes this rounded value.
    ram_gb: float
    chip: str
    os_version: str
    binary_version: str


def describe_machine() -> Machine:
    return Machine(
        ram_gb=round(psutil.virtual_memory().total / GB, 2),
        chip=_chip(),
        os_version=platform.platform(),
        binary_version=_binary_version(),
    )


def _binary_version() -> str:
    try:
        return version("macprovider")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def _chip() -> str:
    if platform.system() == "Darwin":
        try:
            brand = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            brand = ""
        return brand or platform.machine()
    return _cpuinfo_model() or platform.processor() or platform.machine()


def _cpuinfo_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware"):
            return value.strip()
    return ""
