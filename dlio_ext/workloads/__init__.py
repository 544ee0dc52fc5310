"""Workloads: one module (or package) each, named as the workload, holding a registered
`Workload` subclass (see `workloads.base`). A workload gets a `Context` (world, backend, phase
runner, its config) and returns its phases; it never knows which backend it talks to."""
