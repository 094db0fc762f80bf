"""A two-node Ray cluster on this machine, for the tests that need more than one node."""
from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def two_nodes() -> Iterator[tuple]:
    """A head node that measures (``bench``) and a worker node, one CPU each, with this
    process connected; yields ``(cluster, head_id, worker_id, worker_node)``."""
    import ray
    from ray.cluster_utils import Cluster

    from search.engine.executor import ray_system_config

    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, resources={"bench": 1},
                                                                _system_config=ray_system_config()))
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        head_id = next(n["NodeID"] for n in ray.nodes() if n["Resources"].get("bench"))
        worker_id = next(n["NodeID"] for n in ray.nodes() if n["NodeID"] != head_id)
        yield cluster, head_id, worker_id, worker
    finally:
        ray.shutdown()
        cluster.shutdown()
