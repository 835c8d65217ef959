"""The ``dagrider`` command line: key generation and the simulation harness.

Exit codes: 0 success, 1 an invariant failed in a simulation, 2 bad arguments or
input files (with a message naming the problem).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from dagrider.errors import CommitteeError
from dagrider.keygen import generate, write_committee_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except (CommitteeError, ValueError, FileExistsError) as exc:
        print(f"dagrider {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dagrider", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    kg = sub.add_parser("keygen", help="generate a committee: key files + committee.json")
    kg.add_argument("--nodes", "-n", type=int, required=True, help="committee size n = 3f+1")
    kg.add_argument("--out", type=Path, required=True, help="directory to write")
    kg.add_argument("--host", default="127.0.0.1", help="host for --base-port addresses")
    kg.add_argument("--base-port", type=int, help="give node i the address host:base+i")
    kg.add_argument("--note", help="free text stored in every file (e.g. 'TEST KEYS')")
    kg.add_argument("--overwrite", action="store_true", help="replace existing files")
    kg.set_defaults(handler=_keygen)

    from sim.latency import MODELS
    from sim.runner import FAULT_KINDS

    sm = sub.add_parser("sim", help="run a simulated committee and check the invariants")
    sm.add_argument("--nodes", "-n", type=int, default=4, help="committee size n = 3f+1")
    sm.add_argument("--faults", "-f", type=int, default=0, help="faulty nodes (<= f)")
    sm.add_argument(
        "--byzantine", default="none", choices=FAULT_KINDS, help="what the faulty nodes do"
    )
    sm.add_argument("--waves", "-w", type=int, default=10, help="waves every node must decide")
    sm.add_argument("--seed", "-s", type=int, default=0, help="the run's seed (replays it)")
    sm.add_argument("--seeds", type=int, default=1, help="run this many seeds from --seed on")
    sm.add_argument("--latency", default="uniform", choices=sorted(MODELS))
    sm.add_argument("--adversarial", action="store_true", help="adversarial scheduler")
    sm.add_argument("--partitions", type=int, default=0, help="partition episodes (healing)")
    sm.add_argument("--tx-rate", type=float, default=200.0, help="tx/s per node (virtual)")
    sm.add_argument("--tx-size", type=int, default=64, help="transaction size in bytes")
    sm.add_argument("--batch-delay", type=float, default=0.0, help="ms to wait for a batch")
    sm.add_argument("--gc-depth", type=int, default=50, help="rounds kept below last commit")
    sm.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="write the results as JSON (to stdout when no FILE)",
    )
    sm.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    sm.set_defaults(handler=_sim)
    return parser


def _keygen(args: argparse.Namespace) -> int:
    addresses = None
    if args.base_port is not None:
        addresses = [f"{args.host}:{args.base_port + i}" for i in range(args.nodes)]
    committee, secrets = generate(args.nodes, addresses=addresses)
    paths = write_committee_dir(args.out, committee, secrets, args.note, overwrite=args.overwrite)
    for path in paths:
        print(path)
    return 0


def _sim(args: argparse.Namespace) -> int:
    from sim.runner import SimConfig, run

    cfg = SimConfig(
        nodes=args.nodes,
        faults=args.faults,
        byzantine=args.byzantine,
        waves=args.waves,
        latency=args.latency,
        adversarial=args.adversarial,
        partitions=args.partitions,
        tx_per_second=args.tx_rate,
        tx_size=args.tx_size,
        batch_delay=args.batch_delay,
        gc_depth=args.gc_depth,
    )
    if args.seeds < 1:
        raise ValueError("--seeds must be >= 1")
    to_stdout = args.json == "-"
    results = []
    failed = 0
    for seed in range(args.seed, args.seed + args.seeds):
        bar = None if args.quiet or to_stdout else _ProgressBar(f"seed {seed}")
        started = time.perf_counter()
        result = run(cfg, seed, bar.update if bar else None)
        if bar:
            bar.close()
        failed += not result.ok
        doc = result.to_dict()
        doc["wall_seconds"] = round(time.perf_counter() - started, 3)
        results.append(doc)
        if not to_stdout:
            print(result.summary())
        if not result.ok:
            print(f"INVARIANT FAILED (seed {seed}); replay: {result.replay}", file=sys.stderr)
    if args.json:
        text = json.dumps(results[0] if len(results) == 1 else results, indent=2, sort_keys=True)
        if to_stdout:
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if args.seeds > 1 and not to_stdout:
        print(f"{args.seeds - failed}/{args.seeds} seeds passed")
    return 1 if failed else 0


class _ProgressBar:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, label: str, width: int = 30) -> None:
        self.label = label
        self.width = width
        self.enabled = sys.stderr.isatty()

    def update(self, fraction: float) -> None:
        if not self.enabled:
            return
        filled = int(self.width * fraction)
        bar = "#" * filled + "-" * (self.width - filled)
        print(f"\r{self.label} [{bar}] {fraction * 100:5.1f}%", end="", file=sys.stderr)

    def close(self) -> None:
        if self.enabled:
            print("\r" + " " * (self.width + len(self.label) + 12) + "\r", end="", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
