"""Plumbing: paths, devices, seeds, atomic writes, image I/O and checks, weight manifests,
data-parallel sharding, generic command-line types, the bundle's import rewriting and the
import-graph scan behind ``docs/architecture.md``. Imports nothing of the project."""
