"""The GPU benchmark (``python -m benchmarks.gpu``, ``benchmarks/gpu/run.sh``): training throughput
of the largest model points on one GPU against the CPU path."""
