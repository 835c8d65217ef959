"""Tests of the node daemon: client API and metrics."""
