"""Running nnU-Net's own CLI (nnUNetv2_train, nnUNetv2_predict) from tests, with the variables `xlstm-unet env`
prints: nnUNet_extTrainer and nnU-Net's three folders under a test's root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def cli_env(nnunet_root: Path) -> dict[str, str]:
    """The environment a user gets from ``eval "$(xlstm-unet env --data-root ROOT)"``, with in-process
    augmentation."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    exports = subprocess.run([str(BIN / "xlstm-unet"), "env", "--data-root", str(nnunet_root)], env=env,
                             capture_output=True, text=True, check=True).stdout
    for line in exports.splitlines():
        k, v = line.removeprefix("export ").split("=", 1)
        env[k] = v.strip("'")
    env["nnUNet_n_proc_DA"] = "0"
    env["nnUNet_def_n_proc"] = "1"  # one worker for the final validation's export, not nnU-Net's 8
    return env


def run_cli(args: list[str], env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    """Run one of nnU-Net's commands (``args[0]`` a name in the venv's bin folder, or a path); fails the test with
    its output on a non-zero exit status."""
    cmd = [str(BIN / args[0]) if os.sep not in args[0] else args[0], *args[1:]]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd}\nSTDOUT:\n{out.stdout[-3000:]}\nSTDERR:\n{out.stderr[-3000:]}"
    return out
