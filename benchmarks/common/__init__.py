"""Code the serving and ranking benchmarks share: the open-loop load generator, the no-op Serve
app and the CPU meter."""
