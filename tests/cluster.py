"""Re-export of `testkit.cluster`: the test exchange moved there so that the benchmarks can use it too.

Edit testkit/cluster.py, not this file; `from tests.cluster import Cluster` (and every other public
name of testkit.cluster) keeps working."""

from testkit.cluster import *  # noqa: F403
