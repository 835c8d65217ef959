"""The ``dagrider`` command line: keys, the simulators, the daemon, a local cluster, clients.

Exit codes: 0 success, 1 an invariant failed in a simulation, 2 bad arguments or
input files (with a message naming the problem), 3 a runtime start-up failure (address
in use, unusable data directory).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dagrider.errors import CommitteeError
from dagrider.keygen import generate, write_committee_dir
from dagrider.node import content_cli


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["dht-sim"]:  # its own option set: see `dagrider dht-sim --help`
        from sim.dht import main as dht_sim

        return dht_sim(argv[1:], prog="dagrider dht-sim")
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except (CommitteeError, ValueError, FileExistsError, _UserError) as exc:
        print(f"dagrider {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`dagrider tail | head`): not an error of ours. Point
        # stdout at /dev/null so that the interpreter's final flush stays quiet.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return code


class _UserError(Exception):
    """Bad input from the command line or its files: a message, exit status 2."""


class _HelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, except where there is none to show
    (``None``, an off switch, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or default is None
            or default is False
            or default == []
            or default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        return text + " (default: %(default)s)"


def _formatted(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give ``parser`` and all its sub-commands :class:`_HelpFormatter`."""
    parser.formatter_class = _HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _formatted(sub)
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dagrider", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    kg = sub.add_parser(
        "keygen",
        help="generate a committee (key files + committee.json), or one peer key (--peer)",
    )
    kg.add_argument("--nodes", "-n", type=int, help="committee size n = 3f+1")
    kg.add_argument("--peer", action="store_true", help="write one mesh peer key to --out (a file)")
    kg.add_argument("--out", type=Path, required=True, help="directory (or file with --peer)")
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
    sm.add_argument(
        "--latency", default="uniform", choices=sorted(MODELS), help="link latency model"
    )
    sm.add_argument("--adversarial", action="store_true", help="adversarial scheduler")
    sm.add_argument("--partitions", type=int, default=0, help="partition episodes (healing)")
    sm.add_argument("--tx-rate", type=float, default=200.0, help="tx/s per node (virtual)")
    sm.add_argument("--tx-size", type=int, default=64, help="transaction size in bytes")
    sm.add_argument("--batch-size", type=int, default=500, help="transactions per vertex")
    sm.add_argument(
        "--batch-delay",
        type=float,
        default=0.0,
        help="ms to wait for a batch (the daemon's batch_delay_ms is 50; 0: no pacing)",
    )
    sm.add_argument(
        "--idle-delay",
        type=float,
        default=0.0,
        help="ms between rounds with nothing to order (the daemon's idle_round_ms is 200)",
    )
    sm.add_argument(
        "--max-time", type=float, default=0.0, help="virtual ms cap (0: 120 s per wave)"
    )
    sm.add_argument("--gc-depth", type=int, default=50, help="rounds kept below last commit")
    sm.add_argument(
        "--slow-node-delay",
        type=float,
        default=0.0,
        metavar="MS",
        help="delay everything one correct node (drawn from the seed) sends by MS ms",
    )
    sm.add_argument(
        "--step-ms",
        type=float,
        default=5.0,
        metavar="MS",
        help="virtual ms per node step: what arrives in one step is handled together and "
        "its votes leave as one frame per peer, like the daemon's loop iteration "
        "(0: one step per message)",
    )
    sm.add_argument(
        "--down-ms",
        type=float,
        default=3_000.0,
        metavar="MS",
        help="longest crash of a crash node before it restarts from its store (with a "
        "small --gc-depth, long crashes need catch-up to rejoin)",
    )
    sm.add_argument(
        "--partition-ms",
        type=float,
        default=2_000.0,
        metavar="MS",
        help="longest partition episode",
    )
    sm.add_argument(
        "--retain-rounds",
        type=int,
        default=200,
        help="rounds a node's store keeps below its GC floor to serve catch-up "
        "(the daemon's retain_rounds)",
    )
    sm.add_argument(
        "--wal-loss",
        action="store_true",
        help="crash nodes restart from a copy of their store taken up to 1.5 s before the "
        "crash (a deleted WAL, a database-only backup), fenced at the highest round they "
        "sent for when the copy lost a batch they sent, as the daemon's fence file does",
    )
    sm.add_argument(
        "--checkpoint-interval",
        type=int,
        default=0,
        metavar="N",
        help="committed vertices between certified checkpoints; a node that fell behind "
        "its peers' retained rounds installs the latest one (state sync; 0: none)",
    )
    sm.add_argument(
        "--peer-budget-mib",
        type=int,
        default=64,
        help="vertex bytes one peer may make a member hold (the daemon's peer_budget_mib)",
    )
    sm.add_argument(
        "--response-budget-mib",
        type=int,
        default=16,
        help="vertex bytes a member answers one peer per 4 rounds (response_budget_mib)",
    )
    sm.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="write the results as JSON (to stdout when no FILE)",
    )
    sm.add_argument(
        "--report",
        type=Path,
        metavar="FILE.html",
        help="write a self-contained HTML page of the run (DAG, latencies, verdicts); "
        "with --seeds, one page per seed (FILE-SEED.html)",
    )
    sm.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    sm.set_defaults(handler=_sim)

    from sim.crdt_runner import CrdtSimConfig

    cd = CrdtSimConfig()
    cs = sub.add_parser(
        "crdt-sim",
        help="simulate CRDT store replicas (some Byzantine) and check convergence",
        description="Exit status 1 when an invariant is violated; the run replays from its seed.",
    )
    cs.add_argument("--seed", "-s", type=int, default=0, help="the run's seed (replays it)")
    cs.add_argument("--seeds", type=int, default=1, help="run this many seeds from --seed on")
    cs.add_argument("--replicas", "-r", type=int, default=cd.replicas, help="replicas in all")
    cs.add_argument(
        "--byzantine",
        default="none",
        metavar="KIND,...",
        help="one Byzantine replica per KIND: forger, equivocator, withholder, garbage, "
        "liar; or 'all' / 'none'",
    )
    cs.add_argument("--docs", type=int, default=cd.docs, help="documents written")
    cs.add_argument("--fault-ms", type=float, default=cd.fault_ms, help="virtual ms of faults")
    cs.add_argument("--write-ms", type=float, default=cd.write_ms, help="mean ms between writes")
    cs.add_argument("--session-ms", type=float, default=cd.session_ms, help="ms between sessions")
    cs.add_argument("--loss", type=float, default=cd.loss, help="message loss probability")
    cs.add_argument("--duplicate", type=float, default=cd.duplicate, help="duplication prob.")
    cs.add_argument("--reorder", type=float, default=cd.reorder, help="extra-delay probability")
    cs.add_argument("--partitions", type=int, default=cd.partitions, help="partition episodes")
    cs.add_argument("--crashes", type=int, default=cd.crashes, help="crash/restart episodes")
    cs.add_argument(
        "--latency", default=cd.latency, choices=sorted(MODELS), help="link latency model"
    )
    cs.add_argument("--max-rounds", type=int, default=cd.max_rounds, help="final sync rounds cap")
    cs.add_argument("--json", action="store_true", help="print the report(s) as JSON")
    cs.set_defaults(handler=_crdt_sim)

    sub.add_parser(
        "dht-sim",
        help="simulate a Kademlia DHT with churn and malicious peers (--nodes 2000 --seed S)",
        add_help=False,
    )

    nd = sub.add_parser("node", help="run a committee member or a mesh peer as a daemon")
    nd.add_argument("--config", "-c", type=Path, required=True, help="node TOML config")
    nd.add_argument(
        "--role",
        choices=("member", "peer"),
        help="member: votes in the committee; peer: serves DHT, content and CRDT sync only "
        "(default: [node] role of the config, else member)",
    )
    nd.set_defaults(handler=_node)

    cl = sub.add_parser("cluster", help="a local cluster of daemons on loopback")
    cl_sub = cl.add_subparsers(dest="action", required=True)
    up = cl_sub.add_parser("up", help="start the daemons; Ctrl-C stops them all")
    up.add_argument("--nodes", "-n", type=int, default=4, help="committee size n = 3f+1")
    up.add_argument("--config", type=Path, help="existing committee dir (e.g. configs/local-4)")
    up.add_argument("--dir", type=Path, default=Path(".dagrider-cluster"), help="work dir")
    up.add_argument("--base-port", type=int, default=7001, help="peer port of node 0")
    up.add_argument("--api-port", type=int, default=8001, help="API port of node 0")
    up.add_argument("--batch-size", type=int, default=1_000, help="transactions per vertex")
    up.add_argument(
        "--batch-delay-ms", type=int, default=50, help="ms a node waits to fill a batch"
    )
    up.add_argument(
        "--ready-timeout", type=float, default=60.0, help="seconds to wait for every node"
    )
    up.set_defaults(handler=_cluster_up)

    sb = sub.add_parser("submit", help="send transactions to a node")
    sb.add_argument("--api", default="http://127.0.0.1:8001", help="node API base URL")
    sb.add_argument("--token", help="bearer token")
    sb.add_argument("text", nargs="*", help="transactions as UTF-8 text")
    sb.add_argument("--file", type=Path, help="one transaction: the file's bytes")
    sb.add_argument("--count", type=int, default=0, help="also send N random transactions")
    sb.add_argument("--size", type=int, default=512, help="size of random transactions")
    sb.add_argument(
        "--json",
        action="store_true",
        help='print {"ids": [...]} instead of one transaction id per line',
    )
    sb.set_defaults(handler=_submit)

    tl = sub.add_parser("tail", help="follow the committed log of a node")
    tl.add_argument("--api", default="http://127.0.0.1:8001", help="node API base URL")
    tl.add_argument("--token", help="bearer token")
    tl.add_argument("--after", type=int, default=-1, help="start after this log index")
    tl.add_argument("--json", action="store_true", help="print raw JSON entries")
    tl.set_defaults(handler=_tail)

    cr = sub.add_parser("crdt", help="read and write the replicated CRDT store of a node")
    cr_sub = cr.add_subparsers(dest="crdt_command", required=True)
    get = cr_sub.add_parser("get", help="print a document (now, or as of a checkpoint)")
    get.add_argument("doc", help="document id: namespace/name")
    get.add_argument("--checkpoint", type=int, help="the state as of checkpoint K")
    put = cr_sub.add_parser(
        "put",
        help="apply one change to a document",
        description="PATH is dotted (profile.name). Every option may be repeated; all of "
        "them form one signed change.",
    )
    put.add_argument("doc", help="document id: namespace/name")
    put.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=JSON",
        help="LWW set; the value is JSON, so a string needs quotes: title='\"hello\"'",
    )
    put.add_argument("--inc", action="append", default=[], metavar="PATH=N", help="counter +N")
    put.add_argument("--dec", action="append", default=[], metavar="PATH=N", help="counter -N")
    put.add_argument("--add", action="append", default=[], metavar="PATH=JSON", help="set add")
    put.add_argument(
        "--discard", action="append", default=[], metavar="PATH=JSON", help="set remove"
    )
    put.add_argument("--remove", action="append", default=[], metavar="PATH", help="drop key")
    put.add_argument("--ops", help='raw JSON list of operations: [{"path": [...], ...}]')
    for name in ("ls", "checkpoints"):
        cr_sub.add_parser(name, help=f"list the node's {'documents' if name == 'ls' else name}")
    for p in cr_sub.choices.values():
        p.add_argument("--api", default="http://127.0.0.1:8001", help="node API base URL")
        p.add_argument("--token", help="bearer token")
    cr.set_defaults(handler=_crdt)
    content_cli.add_parser(sub)
    return _formatted(parser)


def _keygen(args: argparse.Namespace) -> int:
    if args.peer:
        from dagrider.node.peer_key import PeerKey

        if args.nodes is not None:
            raise ValueError("--peer writes one peer key; it takes no --nodes")
        key = PeerKey.generate()
        key.dump(args.out, args.note, overwrite=args.overwrite)
        print(f"{args.out}: peer key {key.identity().public_key.hex()}")
        return 0
    if args.nodes is None:
        raise ValueError("--nodes is required (or --peer for a mesh peer key)")
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
        batch_size=args.batch_size,
        batch_delay=args.batch_delay,
        idle_delay=args.idle_delay,
        gc_depth=args.gc_depth,
        max_time=args.max_time,
        slow_node_delay=args.slow_node_delay,
        step_ms=args.step_ms,
        down_ms=args.down_ms,
        partition_ms=args.partition_ms,
        retain_rounds=args.retain_rounds,
        wal_loss=args.wal_loss,
        checkpoint_interval=args.checkpoint_interval,
        peer_budget_mib=args.peer_budget_mib,
        response_budget_mib=args.response_budget_mib,
    )
    if args.seeds < 1:
        raise ValueError("--seeds must be >= 1")
    if args.report is not None and not args.report.parent.is_dir():
        raise _UserError(
            f"cannot write the report {args.report}: no directory {args.report.parent}"
        )
    to_stdout = args.json == "-"
    results = []
    failed = 0
    for seed in range(args.seed, args.seed + args.seeds):
        bar = None if args.quiet or to_stdout else _ProgressBar(f"seed {seed}")
        started = time.perf_counter()
        if args.report is not None:
            from sim.html_report import run_observed

            result, observed = run_observed(cfg, seed, bar.update if bar else None)
            _observations[seed] = observed
        else:
            result = run(cfg, seed, bar.update if bar else None)
        if bar:
            bar.close()
        failed += not result.ok
        doc = result.to_dict()
        doc["wall_seconds"] = round(time.perf_counter() - started, 3)
        results.append(doc)
        if not to_stdout:
            print(result.summary())
        if args.report is not None:
            path = _report_path(args.report, seed, args.seeds > 1)
            _write_report(path, cfg, seed, result)
            if not to_stdout:
                print(f"report: {path}")
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


_observations: dict[int, Any] = {}
"""What ``--report`` observed of each seed's run (the DAG, per-round traffic)."""


def _report_path(path: Path, seed: int, many: bool) -> Path:
    return path.with_name(f"{path.stem}-{seed}{path.suffix}") if many else path


def _write_report(path: Path, cfg: Any, seed: int, result: Any) -> None:
    from sim.html_report import render

    try:
        path.write_text(render(result, _observations.pop(seed)), encoding="utf-8")
    except OSError as exc:
        raise _UserError(f"cannot write the report {path}: {exc.strerror or exc}") from None


def _crdt_sim(args: argparse.Namespace) -> int:
    from sim.crdt_runner import CrdtSimConfig, parse_byzantine
    from sim.crdt_runner import run as run_crdt

    cfg = CrdtSimConfig(
        replicas=args.replicas,
        byzantine=parse_byzantine(args.byzantine),
        docs=args.docs,
        fault_ms=args.fault_ms,
        write_ms=args.write_ms,
        session_ms=args.session_ms,
        loss=args.loss,
        duplicate=args.duplicate,
        reorder=args.reorder,
        partitions=args.partitions,
        crashes=args.crashes,
        latency=args.latency,
        max_rounds=args.max_rounds,
    )
    if args.seeds < 1:
        raise ValueError("--seeds must be >= 1")
    docs: list[dict[str, Any]] = []
    failed = 0
    for seed in range(args.seed, args.seed + args.seeds):
        started = time.perf_counter()
        result = run_crdt(cfg, seed)
        failed += not result.ok
        doc = result.to_dict()
        doc["wall_seconds"] = round(time.perf_counter() - started, 3)
        docs.append(doc)
        if not args.json:
            print(result.summary())
        if not result.ok:
            print(f"INVARIANT FAILED (seed {seed}); replay: {result.replay}", file=sys.stderr)
    if args.json:
        print(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2, sort_keys=True))
    elif args.seeds > 1:
        print(f"{args.seeds - failed}/{args.seeds} seeds passed")
    return 1 if failed else 0


def _node(args: argparse.Namespace) -> int:
    from dagrider.node.daemon import run as run_node

    return run_node(args.config, args.role)


def _cluster_up(args: argparse.Namespace) -> int:
    import signal
    import threading

    from dagrider.node.cluster import ClusterError, ClusterSpec, LocalCluster, NodeFailed

    spec = ClusterSpec(
        directory=args.dir,
        nodes=args.nodes,
        committee_dir=args.config,
        base_port=args.base_port,
        api_base_port=args.api_port,
        batch_size=args.batch_size,
        batch_delay_ms=args.batch_delay_ms,
    )
    if args.config is not None and not args.config.is_dir():
        raise _UserError(
            f"--config {args.config}: no such directory (relative paths start at "
            f"{Path.cwd()}); give a committee directory such as configs/local-4 of the "
            "repository, or leave --config out to generate one"
        )
    try:
        cluster = LocalCluster(spec)
    except ClusterError as exc:
        raise _UserError(str(exc)) from None
    except OSError as exc:
        raise _UserError(f"cannot lay out the cluster in {args.dir}: {exc}") from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cluster.start_all()
    failed: list[str] = []
    try:
        try:
            cluster.wait_ready(timeout=args.ready_timeout)
        except (NodeFailed, TimeoutError) as exc:
            failed.append(str(exc))
            # The others may be failing for the same reason (every port in use): say so.
            for i in range(cluster.n):
                if not cluster.alive(i) and (not isinstance(exc, NodeFailed) or i != exc.index):
                    failed.append(f"node {i} failed to start: {cluster.failure_reason(i)}")
            return _cluster_failed(failed)
        for i in range(cluster.n):
            print(f"node {i}: api {cluster.api_url(i)}  log {cluster.log_path(i)}")
        print("cluster is up; Ctrl-C stops it", flush=True)
        while not stop.wait(1.0):
            for i in range(cluster.n):
                if not cluster.alive(i):
                    failed.append(f"node {i} exited: {cluster.failure_reason(i)}")
                    stop.set()
        return _cluster_failed(failed) if failed else 0
    finally:
        cluster.stop_all()
        print("cluster stopped")


def _cluster_failed(reasons: list[str]) -> int:
    """Print why the cluster is not (or no longer) up; the exit status (3, start-up)."""
    for reason in reasons:
        print(f"dagrider cluster: error: {reason}", file=sys.stderr)
    return 3


def _submit(args: argparse.Namespace) -> int:
    import os

    from dagrider.node.client import ApiError, submit_batch, submit_one

    txs = [t.encode() for t in args.text]
    if args.file is not None:
        txs.append(args.file.read_bytes())
    txs += [os.urandom(args.size) for _ in range(args.count)]
    if not txs:
        raise ValueError("nothing to submit: give TEXT, --file or --count")
    try:
        if len(txs) == 1:
            ids = [submit_one(args.api, txs[0], args.token)]
        else:
            ids = [str(i) for i in submit_batch(args.api, txs, args.token, ids=True)["ids"]]
    except ApiError as exc:
        print(f"dagrider submit: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"dagrider submit: cannot reach {args.api}: {_reason(exc)}", file=sys.stderr)
        return 1
    print(json.dumps({"ids": ids}) if args.json else "\n".join(ids))
    return 0


def _reason(exc: OSError) -> str:
    """Why a connection failed, without urllib's wrapping (``<urlopen error ...>``)."""
    inner = getattr(exc, "reason", None)
    if isinstance(inner, OSError):
        return inner.strerror or str(inner)
    if isinstance(inner, str):
        return inner
    return exc.strerror or str(exc)


def _tail(args: argparse.Namespace) -> int:
    import base64

    from dagrider.node.client import ApiError, stream_log

    if args.after < -1:
        raise _UserError(f"--after must be >= -1 (-1: from the start), got {args.after}")
    try:
        for entry in stream_log(args.api, args.after, args.token):
            if args.json:
                print(json.dumps(entry), flush=True)
                continue
            data = base64.b64decode(entry["data"])
            text = data.decode("utf-8", errors="replace") if data.isascii() else data.hex()
            print(f"{entry['index']:>8} wave {entry['wave']:>5} {entry['tx_id'][:16]} {text}")
    except KeyboardInterrupt:
        return 0
    except ApiError as exc:
        print(f"dagrider tail: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        raise  # handled in main: the reader (head, less) went away
    except OSError as exc:
        print(f"dagrider tail: cannot reach {args.api}: {_reason(exc)}", file=sys.stderr)
        return 1
    return 0


def _crdt_ops(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The ``crdt put`` options as API operations, in a fixed order."""
    ops: list[dict[str, Any]] = []
    if args.ops:
        try:
            ops = json.loads(args.ops)
        except ValueError as exc:
            raise _UserError(f"--ops is not JSON: {exc}") from None
        if not isinstance(ops, list) or not all(isinstance(op, dict) for op in ops):
            raise _UserError("--ops must be a JSON list of objects")

    def split(option: str, item: str, parse: bool) -> tuple[list[str], Any]:
        path, eq, raw = item.partition("=")
        if not eq or not path:
            raise _UserError(f"{option} expects PATH=VALUE, got {item!r}")
        if not parse:
            try:
                return path.split("."), int(raw)
            except ValueError:
                raise _UserError(f"{option} {item}: N must be an integer") from None
        try:
            return path.split("."), json.loads(raw)
        except ValueError:
            raise _UserError(
                f"{option} {item}: the value must be JSON (a string needs quotes: "
                f"{path}='{json.dumps(raw)}')"
            ) from None

    for item in args.set:
        path, value = split("--set", item, True)
        ops.append({"path": path, "type": "lww", "action": "set", "args": value})
    for action, items in (("inc", args.inc), ("dec", args.dec)):
        for item in items:
            path, n = split(f"--{action}", item, False)
            ops.append({"path": path, "type": "pncounter", "action": action, "args": n})
    for option, action, items in (
        ("--add", "add", args.add),
        ("--discard", "remove", args.discard),
    ):
        for item in items:
            path, value = split(option, item, True)
            ops.append({"path": path, "type": "orset", "action": action, "args": value})
    ops += [{"path": item.split("."), "action": "remove"} for item in args.remove]
    if not ops:
        raise ValueError(
            "nothing to put: give --set, --inc, --dec, --add, --discard, --remove or --ops"
        )
    return ops


def _crdt(args: argparse.Namespace) -> int:
    from dagrider.node.client import ApiError, crdt_get, crdt_list, crdt_put

    doc = getattr(args, "doc", None)
    if doc is not None:
        namespace, slash, name = doc.partition("/")
        if not slash or not namespace or not name:
            raise _UserError(f"document id {doc!r} is not namespace/name (e.g. notes/todo)")
    try:
        if args.crdt_command == "get":
            out = crdt_get(args.api, args.doc, args.checkpoint, args.token)
        elif args.crdt_command == "put":
            out = crdt_put(args.api, args.doc, _crdt_ops(args), args.token)
        else:
            out = crdt_list(
                args.api, "docs" if args.crdt_command == "ls" else "checkpoints", args.token
            )
    except ApiError as exc:
        print(f"dagrider crdt {args.crdt_command}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"dagrider crdt: cannot reach {args.api}: {_reason(exc)}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


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
