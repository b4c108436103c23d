"""The real reference data the tests check against, kept in the repository under tests/data/ (what each file is,
where it comes from and under which license: tests/data/README.md). A missing file fails the test that needs it,
never skips it."""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parent / "data"


def path(rel: str) -> pathlib.Path:
  """tests/data/<rel>; FileNotFoundError naming the file when it is not there."""
  p = ROOT / rel
  if not p.exists():
    raise FileNotFoundError(f"reference data {p} is missing: it belongs to the repository (tests/data/README.md)")
  return p
