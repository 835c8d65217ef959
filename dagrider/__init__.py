"""dagrider: asynchronous Byzantine atomic broadcast (DAG-Rider) as pure state machines.

The consensus core in this package performs no I/O, reads no clock and draws no
randomness of its own; shells (the simulator in ``sim/``, the daemon) feed it
inputs and perform the effects it returns.
"""

__version__ = "0.1.0"
