"""The Prometheus registry: exact exposition text, escaping, and the naming rules."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from dagrider.node.metrics import Counter, Histogram, Metrics, format_value


def small_registry() -> Metrics:
    m = Metrics()
    commits = m.counter("dagrider_commits_total", "Leaders committed.")
    commits.inc()
    commits.inc(2)
    sent = m.counter("dagrider_peer_bytes_sent_total", "Bytes sent to a peer.", ["peer"])
    sent.labels(peer="2").inc(512)
    sent.labels("1").inc(100)
    m.gauge("dagrider_round", "Current DAG round.").set(17)
    latency = m.histogram(
        "dagrider_commit_latency_seconds", "Submission to commit.", buckets=(0.5, 1, 2.5)
    )
    for seconds in (0.25, 0.5, 3.0):
        latency.observe(seconds)
    return m


def test_render_small_registry_exactly() -> None:
    assert small_registry().render() == (
        "# HELP dagrider_commits_total Leaders committed.\n"
        "# TYPE dagrider_commits_total counter\n"
        "dagrider_commits_total 3\n"
        "# HELP dagrider_peer_bytes_sent_total Bytes sent to a peer.\n"
        "# TYPE dagrider_peer_bytes_sent_total counter\n"
        'dagrider_peer_bytes_sent_total{peer="1"} 100\n'
        'dagrider_peer_bytes_sent_total{peer="2"} 512\n'
        "# HELP dagrider_round Current DAG round.\n"
        "# TYPE dagrider_round gauge\n"
        "dagrider_round 17\n"
        "# HELP dagrider_commit_latency_seconds Submission to commit.\n"
        "# TYPE dagrider_commit_latency_seconds histogram\n"
        'dagrider_commit_latency_seconds_bucket{le="0.5"} 2\n'
        'dagrider_commit_latency_seconds_bucket{le="1"} 2\n'
        'dagrider_commit_latency_seconds_bucket{le="2.5"} 2\n'
        'dagrider_commit_latency_seconds_bucket{le="+Inf"} 3\n'
        "dagrider_commit_latency_seconds_sum 3.75\n"
        "dagrider_commit_latency_seconds_count 3\n"
    )


def test_labelled_histogram_puts_le_last_and_renders_each_series() -> None:
    m = Metrics()
    h = m.histogram("rpc_seconds", "RPC time.", ["peer"], buckets=(0.1,))
    h.labels(peer="b").observe(0.1)  # a bound is inclusive (le = less or equal)
    h.labels(peer="a").observe(0.2)
    assert m.render().splitlines()[2:] == [
        'rpc_seconds_bucket{peer="a",le="0.1"} 0',
        'rpc_seconds_bucket{peer="a",le="+Inf"} 1',
        'rpc_seconds_sum{peer="a"} 0.2',
        'rpc_seconds_count{peer="a"} 1',
        'rpc_seconds_bucket{peer="b",le="0.1"} 1',
        'rpc_seconds_bucket{peer="b",le="+Inf"} 1',
        'rpc_seconds_sum{peer="b"} 0.1',
        'rpc_seconds_count{peer="b"} 1',
    ]


def test_escaping_of_help_and_label_values() -> None:
    m = Metrics()
    c = m.counter("x_total", 'Help with \\ and\nnewline and "quotes".', ["v"])
    c.labels(v='a"b\\c\nd').inc()
    assert m.render() == (
        '# HELP x_total Help with \\\\ and\\nnewline and "quotes".\n'
        "# TYPE x_total counter\n"
        'x_total{v="a\\"b\\\\c\\nd"} 1\n'
    )


def test_labelled_family_without_series_renders_only_its_header() -> None:
    m = Metrics()
    m.gauge("link_up", "Link state per peer.", ["peer"])
    assert m.render() == "# HELP link_up Link state per peer.\n# TYPE link_up gauge\n"
    assert Metrics().render() == ""


def test_gauge_moves_both_ways_and_can_read_a_function() -> None:
    m = Metrics()
    g = m.gauge("queue_length", "Queue.")
    g.set(5)
    g.inc(2)
    g.dec(0.5)
    assert g.value == 6.5
    size = [3]
    f = m.gauge("mempool_transactions", "Mempool.")
    f.set_function(lambda: float(size[0]))
    size[0] = 9
    assert "mempool_transactions 9\n" in m.render()
    assert "queue_length 6.5\n" in m.render()


def test_registration_is_get_or_create_and_rejects_a_different_shape() -> None:
    m = Metrics()
    a = m.counter("a_total", "A.", ["peer"])
    assert m.counter("a_total", "A.", ("peer",)) is a
    with pytest.raises(ValueError, match="already registered as a counter"):
        m.gauge("a_total", "A.")
    with pytest.raises(ValueError, match="already registered"):
        m.counter("a_total", "A.", ["node"])
    m.histogram("h_seconds", "H.", buckets=(1, 2))
    with pytest.raises(ValueError, match="other buckets"):
        m.histogram("h_seconds", "H.", buckets=(1, 3))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Counter("requests", "no suffix"), "must end in _total"),
        (lambda: Counter("9lives_total", "bad"), "invalid metric name"),
        (lambda: Counter("ok_total", "bad", ["peer-id"]), "invalid label name"),
        (lambda: Counter("ok_total", "bad", ["__x"]), "invalid label name"),
        (lambda: Counter("ok_total", "bad", ["a", "a"]), "duplicate label"),
        (lambda: Histogram("h", "bad", ["le"]), "reserved label 'le'"),
        (lambda: Histogram("h", "bad", buckets=(2, 1)), "increase strictly"),
        (lambda: Histogram("h", "bad", buckets=()), "at least one finite"),
    ],
)
def test_invalid_definitions_are_refused(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_label_misuse_is_refused() -> None:
    c = Counter("c_total", "C.", ["peer"])
    with pytest.raises(ValueError, match=r"use \.labels"):
        c.inc()
    with pytest.raises(ValueError, match="do not match"):
        c.labels(node="1")
    with pytest.raises(ValueError, match="expected values"):
        c.labels("1", "2")
    with pytest.raises(ValueError, match="not both"):
        c.labels("1", peer="1")
    with pytest.raises(ValueError, match="expected values"):
        Counter("d_total", "D.").labels("x")
    with pytest.raises(ValueError, match=">= 0"):
        c.labels("1").inc(-1)


def test_the_same_labels_give_the_same_series() -> None:
    c = Counter("c_total", "C.", ["peer", "kind"])
    c.labels("1", "echo").inc()
    c.labels(kind="echo", peer="1").inc()
    assert c.labels("1", "echo").value == 2


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (3.0, "3"),
        (-2.0, "-2"),
        (0.25, "0.25"),
        (1e20, "1e+20"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
    ],
)
def test_format_value(value: float, text: str) -> None:
    assert format_value(value) == text


def test_histogram_observes_a_batch_of_equal_values_at_once() -> None:
    r = Metrics()
    h = r.histogram("batch_latency_seconds", "One value for many transactions", buckets=(1.0, 2.0))
    h.observe(1.5, 1000)
    h.observe(0.5)
    h.observe(3.0, 0)
    assert h.count == 1001 and h.sum == 1500.5
    text = r.render()
    assert 'batch_latency_seconds_bucket{le="1"} 1' in text
    assert 'batch_latency_seconds_bucket{le="2"} 1001' in text
    with pytest.raises(ValueError, match=">= 0"):
        h.observe(1.0, -1)
