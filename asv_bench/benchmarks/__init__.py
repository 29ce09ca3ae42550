"""asv benchmarks of rnnkern; the workload lives in ``rnnkern.bench`` (shapes, workloads)."""
