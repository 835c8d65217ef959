"""Deterministic discrete-event simulator that runs the shipped consensus core.

A run is a pure function of (config, seed): one ``random.Random(seed)`` drives every
choice (latencies, adversarial delays, Byzantine behaviour, workload), and the virtual
clock advances only from event to event. A failing run is replayed from its seed.
"""
