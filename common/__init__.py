"""Plumbing: paths, devices, seeds, atomic writes, image I/O and checks, weight manifests,
data-parallel sharding, generic command-line types, the bundle's import rewriting. Imports
nothing of the project."""
