"""pdserve's benchmarks: a load generator, the standard-vs-disaggregated comparison, and a
cluster simulator that runs pdserve's own policies. Run them as modules from the repository
root, e.g. `python -m bench.load --help`."""
