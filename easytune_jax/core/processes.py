"""Runs one command as the N processes of a JAX multi-controller run on this machine (`launch/multiprocess.py`).

Each process gets the command plus ``--coordinator_address=localhost:<free port> --num_processes=N --process_id=i``
(the flags of every launcher that runs on a mesh, `core.parallel.define_flags`) and its own devices: K CPU devices
(``--xla_force_host_platform_device_count``; CPU processes exchange collectives through gloo) or the GPUs
i*K .. i*K+K-1 (``CUDA_VISIBLE_DEVICES``). This is how the tests check that N processes compute what one process
computes on the same number of devices, and how one host's GPUs run one process each.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class ProcessesConfig:
  """num_processes: processes to start. cpu_devices: CPU devices per process (0: the platform's default).
  gpus_per_process: GPUs per process (0: CUDA_VISIBLE_DEVICES left as it is). grace_seconds: after one process
  failed, how long the others get to stop on their own (JAX's coordination service stops them within the
  launcher's --heartbeat_timeout) before they are killed."""

  num_processes: int = 2
  cpu_devices: int = 0
  gpus_per_process: int = 0
  grace_seconds: float = 30.0

  def __post_init__(self):
    if self.num_processes < 1:
      raise ValueError(f"ProcessesConfig.num_processes: expected >= 1, found {self.num_processes}")
    if self.cpu_devices < 0 or self.gpus_per_process < 0 or self.grace_seconds < 0:
      raise ValueError(
        "ProcessesConfig: cpu_devices, gpus_per_process and grace_seconds must be >= 0, found "
        f"{self.cpu_devices}, {self.gpus_per_process}, {self.grace_seconds}"
      )


def free_port() -> int:
  """A TCP port free on localhost now (for the coordinator)."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def process_env(i: int, cfg: ProcessesConfig, base: dict | None = None) -> dict:
  """The environment of process `i`: `base` (default: this process's) with its devices."""
  env = dict(os.environ if base is None else base)
  if cfg.cpu_devices:
    kept = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(kept + [f"--xla_force_host_platform_device_count={cfg.cpu_devices}"])
    env.setdefault("JAX_PLATFORMS", "cpu")
  if cfg.gpus_per_process:
    k = cfg.gpus_per_process
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i * k + j) for j in range(k))
  return env


def run_processes(
  command: Sequence[str], cfg: ProcessesConfig, log_dir: str | None = None, env: dict | None = None
) -> int:
  """Starts `command` as the `cfg.num_processes` processes of one JAX run and waits for all of them.

  Output: process i writes to `<log_dir>/process_<i>.log`; without `log_dir` process 0 writes to this terminal and
  the others to nowhere. Returns 0 when every process succeeded, else the exit status of the first that failed (by
  then the others have stopped, on their own or killed `cfg.grace_seconds` after the failure). Ctrl-C sends SIGTERM
  to every process: the training loops checkpoint and stop, all at the same step.
  """
  address = f"localhost:{free_port()}"
  procs, logs = [], []
  if log_dir:
    os.makedirs(log_dir, exist_ok=True)
  try:
    for i in range(cfg.num_processes):
      argv = list(command) + [
        f"--coordinator_address={address}",
        f"--num_processes={cfg.num_processes}",
        f"--process_id={i}",
      ]
      if log_dir:
        logs.append(open(os.path.join(log_dir, f"process_{i}.log"), "w"))
        out = logs[-1]
      else:
        out = None if i == 0 else subprocess.DEVNULL
      procs.append(subprocess.Popen(argv, env=process_env(i, cfg, env), stdout=out, stderr=subprocess.STDOUT))
    status, failed_at = 0, None
    try:
      while any(p.poll() is None for p in procs):
        for i, p in enumerate(procs):
          if p.returncode not in (None, 0) and failed_at is None:
            status, failed_at = p.returncode, time.time()
            print(f"multiprocess: process {i} exited with status {p.returncode}", file=sys.stderr)
        if failed_at is not None and time.time() - failed_at > cfg.grace_seconds:
          for i, p in enumerate(procs):
            if p.poll() is None:
              print(f"multiprocess: killing process {i} ({cfg.grace_seconds:.0f} s after the failure)", file=sys.stderr)
              p.kill()
        time.sleep(0.1)
    except KeyboardInterrupt:
      for p in procs:
        if p.poll() is None:
          p.send_signal(signal.SIGTERM)
      for p in procs:
        p.wait()
    return status or next((p.returncode for p in procs if p.returncode), 0)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
    for f in logs:
      f.close()
