"""The benchmark's variant grammar: a method setting as a string ('easytune', 'draft-10+remat', 'easytune+online@2e-5',
'easytune+chunk10@1e-4', ...) parsed into a `Variant` (`parse_variant`), and the default variant lists."""

from __future__ import annotations

import dataclasses

from easytune_jax import finetune

_WHERE = __name__.replace(".", "/") + ".py"


@dataclasses.dataclass(frozen=True)
class Variant:
  """One benchmarked method setting. `method`: a row of `finetune.METHODS`; `k`: its k (an int, 'T' = all T
  steps, None = the row's default); `learning_rate`: this variant's own rate (None = the config's), for
  per-method tuning; `online`: a per-step method with the 'online' sampler (trajectory and gradients at the
  latest params; default 'frozen'); `grad_chunk`: frozen per-step gradients batched C at a time
  (`FinetuneConfig.grad_chunk`; None = the benchmark config's `grad_chunk`); `lora_rank`: train a LoRA adapter
  of that rank on every dense / attention kernel (`FinetuneConfig.lora`, alpha = rank) instead of every
  parameter (None = full fine-tuning)."""

  method: str
  k: int | str | None = None
  remat: bool = False
  learning_rate: float | None = None
  online: bool = False
  grad_chunk: int | None = None
  lora_rank: int | None = None

  @property
  def policy(self) -> finetune.StepPolicy:
    return finetune.METHODS[self.method]

  @property
  def name(self) -> str:
    return (
      self.policy.label
      + ("" if self.k is None else f"-{self.k}")
      + ("+remat" if self.remat else "")
      + ("+online" if self.online else "")
      + (f"+chunk{self.grad_chunk}" if self.grad_chunk else "")
      + (f"+lora{self.lora_rank}" if self.lora_rank else "")
      + (f"@{self.learning_rate:g}" if self.learning_rate else "")
    )

  @property
  def family(self) -> str:
    """The name without the learning rate (variants of one family differ only in their rate)."""
    return dataclasses.replace(self, learning_rate=None).name

  def resolve_k(self, T: int) -> int | None:
    """K passed to FinetuneConfig at T steps (None where the row's default applies)."""
    return T if self.k == "T" else self.k

  def applies(self, T: int) -> bool:
    return not (isinstance(self.k, int) and self.k > T)


def parse_variant(spec: str) -> Variant:
  """'<method>' (a row of `finetune.METHODS` with its default k) or '<method>-<K>' / '<method>-T' (rows that
  read k: EasyTune trains the last K steps, DRaFT backpropagates K deep, DRTune trains K steps), e.g.
  'easytune', 'easytune-10', 'draft-1', 'draft-T', 'refl', 'alignprop', 'drtune'; optionally suffixed
  '+remat' (trajectory rows) or '+online' (per-step rows) or '+chunk<C>' (frozen per-step rows: C
  per-step gradients per vmapped call), then optionally '+lora<r>' (a rank-r LoRA adapter instead of every
  parameter), then optionally '@<learning rate>' (e.g. 'draft-1@1e-4', 'easytune+online@2e-5',
  'easytune+chunk10@1e-4', 'easytune+lora16@1e-3')."""
  s, _, lr_text = spec.strip().partition("@")
  lr = None
  if lr_text:
    try:
      lr = float(lr_text)
    except ValueError:
      lr = -1.0
    if not lr > 0:
      raise ValueError(f"{_WHERE}: variant {spec!r}: expected '@<learning rate>' with a rate > 0, found {lr_text!r}")
  rank = None
  head, plus, tail = s.rpartition("+")
  if plus and tail.startswith("lora"):
    if not tail[4:].isdigit() or int(tail[4:]) < 1:
      raise ValueError(f"{_WHERE}: variant {spec!r}: expected '+lora<r>' with r >= 1, found {tail!r}")
    rank, s = int(tail[4:]), head
  chunk = None
  head, plus, tail = s.rpartition("+")
  if plus and tail.startswith("chunk"):
    if not tail[5:].isdigit() or int(tail[5:]) < 1:
      raise ValueError(f"{_WHERE}: variant {spec!r}: expected '+chunk<C>' with C >= 1, found {tail!r}")
    chunk, s = int(tail[5:]), head
  remat, online = s.endswith("+remat"), s.endswith("+online")
  s = s.rsplit("+", 1)[0] if remat or online else s
  k = None
  name, dash, tail = s.partition("-")
  if dash and name in finetune.METHODS:
    if "k" not in finetune.METHODS[name].uses:
      raise ValueError(
        f"{_WHERE}: variant {spec!r}: {name!r} takes no k (its hyper-parameters: {finetune.METHODS[name].uses})"
      )
    if tail != "T" and (not tail.isdigit() or int(tail) < 1):
      raise ValueError(f"{_WHERE}: variant {spec!r}: expected '{name}-<K>' with K >= 1 or '{name}-T', found K={tail!r}")
    k, s = (tail if tail == "T" else int(tail)), name
  if s not in finetune.METHODS:
    raise ValueError(
      f"{_WHERE}: variant {spec!r}: expected a method in {tuple(finetune.METHODS)} (with k as "
      f"'<method>-<K>' / '<method>-T'), optionally '+remat'; found {s!r}"
    )
  per_step = finetune.METHODS[s].per_step_updates
  if remat and per_step:
    raise ValueError(f"{_WHERE}: variant {spec!r}: {s!r} stores no trajectory, '+remat' does not apply")
  if online and not per_step:
    raise ValueError(f"{_WHERE}: variant {spec!r}: '+online' is a per-step method's sampler variant, not for {s!r}")
  if chunk is not None and (not per_step or online):
    raise ValueError(
      f"{_WHERE}: variant {spec!r}: '+chunk<C>' batches frozen per-step gradients, "
      f"not for {s + ('+online' if online else '')!r}"
    )
  return Variant(s, k, remat, lr, online, chunk, rank)


ALL_MEMORY_VARIANTS = (
  "easytune",
  "draft-1",
  "draft-1+remat",
  "draft-10",
  "draft-10+remat",
  "draft-T",
  "draft-T+remat",
  "refl",
  "alignprop",
  "alignprop+remat",
  "drtune",
  "drtune+remat",
)
ALL_SPEED_VARIANTS = ("easytune", "draft-1", "draft-10", "draft-T", "refl", "alignprop", "drtune")
