"""The GPU benchmark scripts as a CPU meets them: they say they need a GPU; and the pieces of
benchmarks/hf_roundtrip.py that run on any device do run (its LoRA steps failed on every device)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from llm_cli import ENV, REPO

sys.path.insert(0, str(REPO))  # the benchmarks are scripts beside the package, not part of it

from benchmarks.hf_roundtrip import lora_steps_per_second  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the scripts would run")
@pytest.mark.parametrize("script", ["gpu_check.py", "cuda_train.py"])
def test_a_gpu_script_on_a_cpu_says_it_needs_a_gpu(script):
    done = subprocess.run(
        [sys.executable, f"benchmarks/{script}"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "a CUDA GPU, and this machine has none" in done.stderr


def test_hf_roundtrips_lora_steps_run(tiny_model_dir):
    assert lora_steps_per_second(tiny_model_dir, 2, 16, torch.device("cpu")) > 0


def test_gpu_checks_commands_are_ones_the_cli_accepts(tmp_path, monkeypatch):
    # The commands part runs only on a GPU: each command it would run must at least parse, with its files there.
    import benchmarks.gpu_check as gpu_check
    from llm.cli.parser import build_parser

    given = []
    monkeypatch.setattr(gpu_check, "run", lambda command, timeout: given.append(command) or "done")
    rows = gpu_check.commands(tmp_path, None)
    assert len(rows) == len(given) == 7
    for command in given:
        argv = command[command.index("llm") + 1 :]
        args = build_parser().parse_args(argv)
        assert getattr(args, "device", "cuda") == "cuda", argv
        assert all(Path(a).exists() for a in argv if a.startswith(str(REPO))), argv  # the models and data it reads
