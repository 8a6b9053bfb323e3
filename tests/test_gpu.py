"""The CUDA path. Skipped where torch sees no GPU (CI has none); on a GPU machine run
`./dev.sh test tests/test_gpu.py`."""
import pytest
import ray
import torch

from rayagg.rundir import checkpoint
from rayagg.learning.plan import build_node, evaluation_split, local_data, make_plan
from rayagg.loop import execute
from rayagg.runtime.runner import RayRunner

pytestmark = [pytest.mark.gpu, pytest.mark.ray, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = torch.device("cuda")


@pytest.fixture
def local_ray():
    """A local Ray with every GPU of the machine; no dashboard (these tests need none)."""
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    yield
    ray.shutdown()


def test_a_gpu_node_trades_cpu_logits_and_its_checkpoint_loads_on_cpu(tiny_plan, tiny_dataset, tmp_path):
    leaf = build_node(tiny_plan, "device-0", local_data(tiny_plan, "device-0", tiny_dataset), device=CUDA)
    on_gpu = build_node(tiny_plan, "cloud-0", device=CUDA)
    on_cpu = build_node(tiny_plan, "cloud-0")  # same seed: same initial weights
    samples = leaf.encode()
    for node in (leaf, on_gpu, on_cpu):
        node.add_bridge_samples(samples)
    leaves = ["device-0"]
    gpu_logits, cpu_logits = on_gpu.logits(leaves), on_cpu.logits(leaves)
    # logits leave a node on the CPU whatever its device: they cross actors as numpy
    assert gpu_logits.device.type == "cpu"
    torch.testing.assert_close(gpu_logits, cpu_logits, atol=1e-3, rtol=1e-3)

    losses = [on_gpu.learn(leaves, leaf.logits(leaves)) for _ in range(4)]
    assert losses[-1] < losses[0]
    leaf.learn(leaves, gpu_logits)  # a leaf mixes its real data (kept on the CPU) in

    path = tmp_path / "cloud-0.pt"
    checkpoint.save(on_gpu.state_dict(), path)
    on_cpu.load_state_dict(checkpoint.load(path))
    test = evaluation_split(tiny_plan, tiny_dataset)
    gpu_accuracy, _ = on_gpu.evaluate(*test)
    cpu_accuracy, _ = on_cpu.evaluate(*test)
    assert cpu_accuracy == pytest.approx(gpu_accuracy, abs=0.01)


def test_gpu_tiers_train_on_cuda_and_cpu_tiers_see_no_gpu(local_ray, tiny_config, tiny_dataset, tmp_path):
    tiers = tiny_config.model_dump()["tree"]["tiers"]
    for tier, gpus in zip(tiers, (0.5, 0.25, 0)):
        tier["resources"]["num_gpus"] = gpus
    config = tiny_config.with_changes(tree={"tiers": tiers})
    runner = RayRunner(make_plan(config, tiny_dataset))
    records = execute(runner, tmp_path)
    for node, info in runner.placement.items():
        on_gpu = not node.startswith("device")
        assert info.device == ("cuda" if on_gpu else "cpu"), (node, info)
        assert (info.cuda_visible_devices != "") == on_gpu, (node, info)
    cloud = [r.accuracy for r in records if r.node == "cloud-0"]
    assert cloud[-1] > 0.3  # chance is 0.1
