"""A discrete-event simulator of a pdserve cluster that runs pdserve's own route decision,
endpoint picker and autoscaling policy against roofline models of real accelerators.

`python -m bench.clustersim --help`; the engine is `bench.clustersim.events.simulate`.
"""
