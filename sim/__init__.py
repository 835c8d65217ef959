"""Deterministic discrete-event simulator that runs the shipped consensus core.

A run is a pure function of (config, seed): one ``random.Random(seed)`` drives every
choice (latencies, adversarial delays, Byzantine behaviour, workload), and the virtual
clock advances only from event to event. A failing run is replayed from its seed.

Each run ends with verdicts: agreement, integrity, validity, liveness (the goal reached
with committed leaders; a stalled committee fails early) and faults-happened (every
crash node restarted, every Byzantine strategy really attacked). The strategies in
:mod:`sim.byzantine` include the attacks of the adversary review: ``future-vertex``,
``flood``, ``request-amplification`` and ``max-weak-edges``.
"""
