"""Local clusters as processes on loopback: our store and a real etcd, side by side.

Used by ``kvstore cluster up``, ``kvstore reference-etcd``, ``kvstore bench``,
the demo, the chaos harness and the tests.
"""
