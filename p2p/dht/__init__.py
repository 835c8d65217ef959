"""Kademlia as pure state machines: keyspace, routing table, records, lookups, requests.

Nothing here does I/O, reads a clock or draws random numbers: time comes in as
``now: float`` (unix seconds), and the one random input (bucket-refresh targets) as a
caller-supplied 32-byte ``nonce``. The asyncio shell is ``p2p.dht_service`` (beside this
package); the simulator ``sim.dht`` drives the same machines.

Public API (stable; changes are listed at the end of this docstring)
--------------------------------------------------------------------

peer
    ``Addr = tuple[str, int]``; ``node_id(key)`` = sha256(b"dagrider/dht/id/v1" + key);
    ``PeerInfo(key: bytes, addrs: tuple[Addr, ...] = ())`` with ``.id`` (32 bytes) and
    ``.int_id``.
keyspace
    ``distance(a, b) -> int``, ``common_prefix_len(a, b)``, ``bucket_index(self_id,
    other)`` (0..255: bucket i = distance in [2**i, 2**(i+1))), ``id_in_bucket(self_id,
    i, nonce)``, ``closer(target, a, b)``, ``sort_by_distance(target, items, id_of)``,
    ``sort_ids(target, ids)``.
records
    ``Record(author, name, value, seq, expires, signature)`` with ``.key`` (=
    ``record_key(author, name)``); ``ProviderRecord(key, provider: PeerInfo, expires,
    signature)``; ``sign_record(signer, name, value, seq, expires) -> Record``;
    ``sign_provider(signer, key, addrs, expires) -> ProviderRecord`` (``signer``: has
    ``public_key`` and ``sign(bytes) -> bytes``: ``p2p.identity.Identity`` or
    ``KeySigner(seed)``); ``validate_record(rec, now, *, key=None, max_ttl=...)`` and
    ``validate_provider(rec, now, *, key=None, max_ttl=...)`` raise
    ``RecordError(reason, detail)``. Reasons: malformed, oversize, bad-signature,
    expired, stale-seq, conflict, wrong-key, too-far-future, full.
    ``supersedes(new, old)``, ``check_replace(new, stored)``; ``MAX_NAME = 64``,
    ``MAX_VALUE = 16 KiB``.
messages
    Requests ``Ping(sender)``, ``FindNode(target, sender)``, ``GetRecord(key, sender)``,
    ``PutRecord(record, sender)``, ``AddProvider(record, sender)``,
    ``GetProviders(key, sender)`` (``sender: PeerInfo | None = None``; None = client
    mode). Responses ``Pong()``, ``Nodes(closer)``, ``RecordResult(record, closer)``,
    ``PutResult(stored, reason="")``, ``ProvidersResult(providers, closer)`` (providers
    are signed ``ProviderRecord``). ``encode(msg)``, ``decode(data)``,
    ``decode_request(data)``, ``decode_response(data)`` raise only
    ``DhtDecodeError(field, detail)``. ``MAX_PEERS = MAX_PROVIDERS = 32``,
    ``MAX_MESSAGE_BYTES = 48 KiB``, ``DHT_CHANNEL_KIND = 5``.
config
    ``DhtConfig``: k, alpha, disjoint_paths, quorum, slow_after, request_timeout, store
    bounds, TTLs, refresh and republish intervals; validated on construction.
routing
    ``RoutingTable(self_id, *, k=20, max_failures=3, replacements=None, now=0.0)``:
    ``seen(peer, now) -> CheckLiveness | None`` (ping ``.peer``; answer -> ``seen``,
    failure -> ``failed``), ``failed(key, now) -> bool`` (True = dropped),
    ``remove(key)``, ``get(key)``, ``closest(target, count=None, *, exclude=())``,
    ``touch(target, now)``, ``stale_buckets(now, refresh_interval, nonce) ->
    list[bytes]`` (lookup targets), ``sparse_buckets(now, nonce, *, above=-1,
    fewer_than=None) -> list[bytes]`` (join refresh, see below), ``peers()``,
    ``len(table)``, ``key in table``.
store
    ``RecordStore(*, max_records, max_ttl, republish_interval)``: ``put(rec, now)``
    (validates; raises ``RecordError``), ``get(key, now)``, ``expire(now)``,
    ``due_for_republish(now)``, ``mark_republished(key, now)``.
    ``ProviderStore(*, max_keys, max_per_key, max_ttl)``: ``add(rec, now)``,
    ``get(key, now, limit=None)``, ``expire(now)``.
lookup
    ``Lookup(target, seeds, *, kind="nodes" | "record" | "providers", k=20, alpha=3,
    disjoint_paths=1, slow_after=1.0, quorum=None, provider_limit=None,
    self_key=None, ...)`` or ``Lookup.from_config(target, seeds, config, *, kind,
    self_key, provider_limit)``; ``next_queries(now) -> list[PeerInfo]``,
    ``request(sender) -> Request`` (what to send them), ``on_response(peer_key,
    response, now)``, ``on_failure(peer_key, now)``, ``next_deadline() -> float |
    None`` (call ``next_queries`` again then: a query turns slow), ``in_flight()``,
    ``done``, ``result ->
    LookupResult(closest, record, providers, outdated, hops, queries, failures,
    rejected)``, ``responded`` (peers that answered: feed the routing table).
server
    ``DhtCore(self_info, config=DhtConfig(), *, now=0.0)`` with ``.routing``,
    ``.records``, ``.providers``; ``handle(peer_key, request, now) -> Response``
    (raises ``DhtRequestError(code, detail)``, code "sender-mismatch", when
    ``request.sender.key`` is not the authenticated ``peer_key``);
    ``peer_responded(peer, now)``, ``peer_failed(key, now)``,
    ``take_liveness_checks() -> list[CheckLiveness]``.

Changes after publication (no signature changed):

- ``DhtConfig`` defaults: ``disjoint_paths=3``, ``quorum=3`` (were 1 and None), the
  setting ``sim.dht`` validated; ``Lookup(...)`` keyword defaults stay plain (1, None).
- ``Lookup.next_deadline()`` and ``Lookup.in_flight()`` added.
- ``RoutingTable.sparse_buckets(now, nonce, *, above=-1, fewer_than=None)`` added.
  Joining = own-id lookup, then one lookup per target it returns with ``above`` =
  ``bucket_index(self_id, result.closest[-1].id)``: without it whole quarters of the
  keyspace stayed unknown to some peers in ``sim.dht`` and stores went astray.
  ``stale_buckets`` returns nothing right after construction (buckets start touched
  at ``now``), so use ``sparse_buckets`` at bootstrap.
- ``quorum`` semantics: a record lookup stops once ``quorum`` peers returned the best
  record *and* every path still running returned it at least once.
- ``RoutingTable.bucket(i)``, ``replacement_cache(i)``, ``bucket_sizes()`` added
  (tests, status); ``RecordStore.records()``, ``ProviderStore.keys()`` added.
"""
