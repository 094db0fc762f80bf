"""A two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``): placement across nodes."""

import optuna
import pytest
import ray
from ray.cluster_utils import Cluster

import clusters

from search.engine.driver import Search
from flat_settings import flat_settings


@pytest.fixture()
def two_nodes():
    with clusters.two_nodes() as nodes:
        yield nodes


@pytest.mark.slow
def test_a_measurement_blocks_only_its_own_node(tmp_path, two_nodes):
    _, head_id, worker_id, _ = two_nodes
    settings = flat_settings(
        study="c", space="tiny", budget="100000cpu-s", dataset="digits", target="cpu:bs1:64", storage=None,
        tracking_uri=None, workdir=str(tmp_path), sampler="random", epochs=8, seed=0, address=None, data_root=None,
        trials_per_device=1, cpus_per_trial=1, max_trials=3, scheduler="full", measure_seconds=1.0,
        trainer="search.bench.overhead:synthetic_train",
    )
    # Trainings busy-wait one second per epoch: long enough for a measurement to happen beside one.
    assert Search(settings).run() == 0
    study = optuna.load_study(study_name="c", storage=settings.run.storage)
    trials = [t for t in study.trials if t.user_attrs.get("measure_interval")]
    measures = [t.user_attrs["measure_interval"] for t in trials]
    trains = [i for t in trials for i in t.user_attrs["train_intervals"]]
    overlaps = lambda a, b: a[0] < b[1] and b[0] < a[1]  # noqa: E731
    assert {m[2] for m in measures} == {head_id}  # only the bench node measures
    # Never beside training on its own node...
    assert not any(overlaps(m, t) for m in measures for t in trains if t[2] == m[2])
    # ...while the other node kept training through at least one measurement.
    assert any(overlaps(m, t) for m in measures for t in trains if t[2] == worker_id)


@pytest.mark.slow
def test_a_cuda_target_needs_a_bench_node_with_a_gpu():
    """A cluster with a GPU, but not on the measuring node, is refused at start (a cuda
    measurement there could never be placed). Ray's GPU counts are logical: no GPU needed."""
    from search.engine.executor import plan_resources
    from search.core.target import parse_target

    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, resources={"bench": 1}))
    cluster.add_node(num_cpus=1, num_gpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        with pytest.raises(ValueError, match="'bench' resource and a GPU"):
            plan_resources("gpu", parse_target("cuda:bs64:224:fp16"), trials_per_device=1, cpus_per_trial=1)
        resources = plan_resources("gpu", parse_target("cpu:bs1:224"), trials_per_device=2, cpus_per_trial=1)
        assert sorted(n.slots for n in resources.nodes) == [0, 2] and resources.measure_devices == 0.0
    finally:
        ray.shutdown()
        cluster.shutdown()
