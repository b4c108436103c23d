"""Data-parallel and FSDP-style sharding with `jax.jit` + `NamedSharding` (no pmap), multi-host init.

A mesh has a `data` axis (batch split) and an optional `fsdp` axis (parameters and optimizer state split
along their largest divisible dimension; the batch is split over both axes). Jitted steps take sharded
inputs and XLA inserts the collectives: the gradient of a mean over the global batch is all-reduced, and a
similarity matrix built inside the step from batch embeddings spans the GLOBAL batch (negatives for
InfoNCE/SPL come from every device), exactly as on one device.

Launch (each host runs the same command):
  GPU cluster: python -m launch.finetune --mesh=data=8 --coordinator_address=host0:1234 \
                 --num_processes=4 --process_id=$RANK ...
  TPU pod slice / SLURM: python -m launch.finetune --mesh=data=32 --distributed  (auto-detected)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp")


def parse_mesh_spec(spec: str, num_devices: int | None = None) -> dict[str, int]:
  """Parses "data=8" / "data=4,fsdp=2" / "" (all devices on `data`). A size of -1 takes the rest."""
  num_devices = num_devices or jax.device_count()
  sizes: dict[str, int] = {}
  for part in filter(None, (p.strip() for p in spec.split(","))):
    name, sep, value = part.partition("=")
    if not sep or name not in AXES:
      raise ValueError(f"--mesh: expected comma-separated 'axis=size' with axis in {AXES}, found {part!r} in {spec!r}")
    try:
      sizes[name] = int(value)
    except ValueError:
      raise ValueError(f"--mesh: size of axis '{name}' must be an integer, found {value!r}") from None
    if sizes[name] == 0 or sizes[name] < -1:
      raise ValueError(f"--mesh: size of axis '{name}' must be positive or -1, found {sizes[name]}")
  sizes.setdefault("data", -1)
  sizes.setdefault("fsdp", 1)
  known = int(np.prod([v for v in sizes.values() if v != -1]))
  rest = [k for k, v in sizes.items() if v == -1]
  if len(rest) > 1:
    raise ValueError(f"--mesh: at most one axis may be -1, found {rest} in {spec!r}")
  if rest:
    if num_devices % known:
      raise ValueError(f"--mesh {spec!r}: {num_devices} devices are not divisible by {known}")
    sizes[rest[0]] = num_devices // known
  total = sizes["data"] * sizes["fsdp"]
  if total != num_devices:
    raise ValueError(f"--mesh {spec!r}: data x fsdp = {total} devices, but {num_devices} are available")
  return {k: sizes[k] for k in AXES}


def make_mesh(spec: str | dict = "", devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp') mesh over `devices` (default: all devices of all hosts)."""
  devices = list(devices) if devices is not None else jax.devices()
  sizes = spec if isinstance(spec, dict) else parse_mesh_spec(spec, len(devices))
  shape = tuple(sizes[a] for a in AXES)
  return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every device of the mesh."""
  return NamedSharding(mesh, P(AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_divisible(global_batch: int, mesh: Mesh, what: str = "batch_size") -> None:
  n = mesh.devices.size
  if global_batch % n:
    raise ValueError(
      f"{what}={global_batch} must be divisible by the number of devices in the mesh ({n}: {dict(mesh.shape)})"
    )


def param_spec(x: Any, fsdp: int, min_size: int = 2**12) -> P:
  """Shards the largest dimension divisible by `fsdp` (arrays of at least `min_size` elements)."""
  shape = np.shape(x)
  if fsdp == 1 or np.prod(shape, dtype=np.int64) < min_size:
    return P()
  for d in sorted(range(len(shape)), key=lambda i: -shape[i]):
    if shape[d] % fsdp == 0:
      spec = [None] * len(shape)
      spec[d] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(mesh: Mesh, tree: Any, min_size: int = 2**12) -> Any:
  """NamedShardings for a params / optimizer-state / TrainState pytree (FSDP on the 'fsdp' axis)."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(x, fsdp, min_size)), tree)


def shard_state(state: Any, mesh: Mesh, min_size: int = 2**12) -> Any:
  return jax.device_put(state, state_shardings(mesh, state, min_size))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Places a host batch on the mesh, split along the batch dimension.

  Single host: `batch` is the global batch. Multi-host: each process passes ITS shard (global batch /
  process_count rows, e.g. from `batch_at(..., shard_index=jax.process_index(), num_shards=...)`) and the
  global array is assembled without any host holding it whole.
  """
  sharding = batch_sharding(mesh)
  leaves = jax.tree.leaves(batch)
  if leaves:
    rows = np.shape(leaves[0])[0] * jax.process_count()
    check_batch_divisible(rows, mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """Multi-process settings (absl flags in the launchers). `auto` lets JAX detect TPU pods / SLURM.

  `heartbeat_timeout_seconds`: a process that stops answering (killed, its host lost) is declared dead after this
  long, and JAX's coordination service then stops every other process with a message naming the cause (instead of
  leaving them waiting in a collective).
  """

  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  auto: bool = False
  heartbeat_timeout_seconds: int = 100


_RUNTIME = {"initialized": False}


def initialize_distributed(cfg: DistributedConfig) -> bool:
  """Calls `jax.distributed.initialize` when a multi-process launch is asked for. Returns True if it did.

  Call it before anything touches a JAX device. CPU processes exchange their collectives through gloo
  (`jax_cpu_collectives_implementation`, unless set otherwise already): the multi-process runs of the tests use it
  on one machine.
  """
  if cfg.coordinator_address is None and not cfg.auto:
    return False
  if cfg.coordinator_address is not None and (cfg.num_processes is None or cfg.process_id is None):
    raise ValueError(
      "--coordinator_address needs --num_processes and --process_id (or use --distributed "
      "for auto-detection on TPU pods and SLURM)"
    )
  if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  timeouts = {"heartbeat_timeout_seconds": cfg.heartbeat_timeout_seconds}
  if cfg.auto:
    jax.distributed.initialize(**timeouts)
  else:
    jax.distributed.initialize(cfg.coordinator_address, cfg.num_processes, cfg.process_id, **timeouts)
  _RUNTIME["initialized"] = True
  return True


def is_multiprocess() -> bool:
  """True in a process that joined a multi-process run (`initialize_distributed`); touches no device."""
  return _RUNTIME["initialized"] and jax.process_count() > 1


def is_main_process() -> bool:
  """True in the process that writes a run's files (metrics, reports, configs): process 0, or the only one."""
  return jax.process_index() == 0


def any_process(flag: bool) -> bool:
  """`flag` OR-ed over every process (a collective when there are several: every process must call it at the same
  point). Keeps decisions taken from process-local events, such as a SIGTERM, the same on every process."""
  if not is_multiprocess():
    return bool(flag)
  from jax.experimental import multihost_utils

  return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag)))))


def define_flags() -> None:
  """Registers --mesh and the multi-process flags on absl's FLAGS (call once per launcher)."""
  from absl import flags

  flags.disclaim_key_flags()  # key flags of the launcher calling this function: listed by its --help
  flags.DEFINE_string("mesh", "", "Device mesh, e.g. 'data=8' or 'data=4,fsdp=2' (default: all on data).")
  flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0.")
  flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
  flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")
  flags.DEFINE_bool("distributed", False, "Multi-process with auto-detection (TPU pods, SLURM).")
  flags.DEFINE_integer(
    "heartbeat_timeout",
    DistributedConfig.heartbeat_timeout_seconds,
    "Multi-process: seconds after which a silent (dead) process stops the others.",
  )


def setup_from_flags() -> Mesh:
  """Initialises the distributed runtime from the flags of `define_flags` and builds the mesh."""
  from absl import flags

  f = flags.FLAGS
  initialize_distributed(
    DistributedConfig(f.coordinator_address, f.num_processes, f.process_id, f.distributed, f.heartbeat_timeout)
  )
  return make_mesh(f.mesh)


def host_local_slice(global_batch: int) -> slice:
  """Rows of the global batch this process loads in a multi-host run."""
  n, i = jax.process_count(), jax.process_index()
  if global_batch % n:
    raise ValueError(f"batch_size={global_batch} must be divisible by the process count {n}")
  per = global_batch // n
  return slice(i * per, (i + 1) * per)


def _shape_key(tree: Any) -> tuple:
  return (jax.tree.structure(tree), tuple(np.shape(x) for x in jax.tree.leaves(tree)))


def jit_sharded(
  step: Callable, mesh: Mesh, *, batch_argnums: Sequence[int] = (1,), min_size: int = 2**12, donate_state: bool = False
) -> Callable:
  """`jax.jit` of an UNJITTED `step(state, *args) -> (state, metrics)` with explicit shardings on `mesh`.

  The state (argument 0; params / optimizer state / TrainState) keeps `state_shardings` in and out (FSDP
  on the 'fsdp' axis), the arguments at `batch_argnums` (pytrees whose leaves lead with the global batch
  dim) are split over every device with `batch_sharding`, every other argument (keys, constants, frozen
  params) and the metrics are replicated. Shardings are derived from the call's shapes (one compile per
  distinct state/argument structure); inputs are placed on the mesh on each call (host batches via
  `shard_batch`, so multi-host processes pass only their rows, and a global batch that does not divide the
  device count raises a clear ValueError before XLA sees it).
  """
  cache: dict = {}
  batch_argnums = tuple(batch_argnums)

  def call(state, *args):
    key = (_shape_key(state), tuple(_shape_key(a) for a in args))
    if key not in cache:
      st = state_shardings(mesh, state, min_size)
      rest = tuple(
        jax.tree.map(lambda _: batch_sharding(mesh) if i + 1 in batch_argnums else replicated(mesh), a)
        for i, a in enumerate(args)
      )
      cache[key] = (
        jax.jit(
          step,
          in_shardings=(st, *rest),
          out_shardings=(st, replicated(mesh)),
          donate_argnums=(0,) if donate_state else (),
        ),
        st,
      )
    fn, st = cache[key]
    # Placing the inputs is a no-op for arrays already laid out as required (e.g. the previous step's state);
    # host batches go through shard_batch so that multi-host runs pass only their local rows.
    state = place(state, st)
    args = tuple(
      shard_batch(a, mesh) if i + 1 in batch_argnums else place(a, jax.tree.map(lambda _: replicated(mesh), a))
      for i, a in enumerate(args)
    )
    return fn(state, *args)

  return call


def gathered(tree: Any) -> Any:
  """A whole copy of every array of `tree` on this process's first local device: what single-device code
  (held-out sampling, evaluation, export) needs from a state that is split or replicated over a mesh.

  Leaves already on one device, and non-array leaves, are returned as they are. A leaf spread over devices of
  this process only is copied on device; a leaf of a multi-process mesh is all-gathered over the processes
  (`multihost_utils.process_allgather`, a collective: every process must call this with the same tree). The
  values are copied, never recomputed, so the result equals the one-device state bit for bit.
  """
  here = jax.local_devices()[0]

  def leaf(x):
    if not isinstance(x, jax.Array) or len(x.sharding.device_set) == 1:
      return x
    if x.is_fully_addressable:
      return jax.device_put(x, here)
    from jax.experimental import multihost_utils

    return jax.device_put(multihost_utils.process_allgather(x, tiled=True), here)

  return jax.tree.map(leaf, tree)


def place(tree: Any, shardings: Any) -> Any:
  """`jax.device_put(tree, shardings)` that also takes values every process holds whole (host arrays, arrays on one
  local device) onto shardings that span several processes, where `device_put` refuses cross-host transfers: each
  process then supplies its devices' parts of its own copy. Arrays already laid out as asked pass through."""

  def leaf(x, s):
    if isinstance(x, jax.Array) and x.sharding == s:
      return x
    if s.is_fully_addressable or (isinstance(x, jax.Array) and not x.is_fully_addressable):
      return jax.device_put(x, s)
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):  # typed keys travel as their data
      return jax.random.wrap_key_data(leaf(jax.random.key_data(x), s), impl=jax.random.key_impl(x))
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda index: x[index])

  return jax.tree.map(leaf, tree, shardings)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Every array leaf of `tree` (host or one-device values, equal on every process) replicated over `mesh`: the
  form in which a multi-process run saves values that every process holds whole (e.g. the base parameters)."""
  return place(tree, jax.tree.map(lambda _: replicated(mesh), tree))


def local_rows(batch: Any) -> Any:
  """This process's rows of a GLOBAL host batch (every process built the same one; identity on one process),
  i.e. what `shard_batch` / `jit_sharded` expect from each process of a multi-host run."""
  if jax.process_count() == 1:
    return batch
  leaves = jax.tree.leaves(batch)
  rows = host_local_slice(np.shape(leaves[0])[0]) if leaves else slice(None)
  return jax.tree.map(lambda x: np.asarray(x)[rows], batch)
