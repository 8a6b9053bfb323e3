"""BSBODP as pure torch: loss values by hand, passes, teachers, evaluation."""
import math
import pickle

import pytest
import torch
import torchvision
from torch import nn

from rayagg.learning import autoencoder, protocol
from rayagg.errors import TrainingError
from rayagg.learning.node import BridgeSamples, LocalData, NodeState
from rayagg.learning.protocol import DistillSettings


def softmax(values, temperature):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def hand_kd(student, teacher, temperature):
    """T^2 * sum_i p_i log(p_i / q_i), p = softmax(teacher/T), q = softmax(student/T)."""
    p, q = softmax(teacher, temperature), softmax(student, temperature)
    return temperature**2 * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def hand_ce(logits, label):
    return -math.log(softmax(logits, 1.0)[label])


STUDENT, TEACHER, LABEL = [2.0, 0.5, -1.0], [0.0, 1.5, 0.3], 1


def tensors():
    return torch.tensor([STUDENT]), torch.tensor([TEACHER]), torch.tensor([LABEL])


def test_distillation_loss_matches_hand_computation():
    student, teacher, _ = tensors()
    got = protocol.distillation_loss(student, teacher, temperature=3.0).item()
    assert got == pytest.approx(hand_kd(STUDENT, TEACHER, 3.0), rel=1e-5)


def test_distillation_loss_is_zero_for_equal_logits():
    logits = torch.randn(4, 10)
    assert protocol.distillation_loss(logits, logits.clone(), 3.0).item() == pytest.approx(0, abs=1e-6)


def test_nonleaf_loss_matches_hand_computation():
    student, teacher, label = tensors()
    got = protocol.nonleaf_loss(student, teacher, label, temperature=3.0, beta=10.0).item()
    want = hand_ce(STUDENT, LABEL) + 10.0 * hand_kd(STUDENT, TEACHER, 3.0)
    assert got == pytest.approx(want, rel=1e-5)


def test_leaf_loss_matches_hand_computation():
    student, teacher, label = tensors()
    real_logits, real_label = torch.tensor([[0.1, 0.2, 3.0]]), torch.tensor([2])
    got = protocol.leaf_loss(real_logits, real_label, student, teacher, label,
                             temperature=3.0, gamma=0.5).item()
    want = (hand_ce([0.1, 0.2, 3.0], 2) + hand_ce(STUDENT, LABEL)
            + 0.5 * hand_kd(STUDENT, TEACHER, 3.0))
    assert got == pytest.approx(want, rel=1e-5)


def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))


def fixed_data(n=64):
    generator = torch.Generator().manual_seed(1)
    inputs = torch.rand(n, 1, 8, 8, generator=generator)
    labels = torch.randint(0, 5, (n,), generator=generator)
    teacher_model = small_model(seed=7).eval()
    with torch.no_grad():  # a teacher the student can actually imitate
        teacher = teacher_model(inputs) * 5
    return inputs, labels, teacher


def mean_distillation_loss(model, inputs, teacher, settings):
    model.eval()
    with torch.no_grad():
        return protocol.distillation_loss(model(inputs), teacher, settings.temperature).item()


def test_directional_pass_lowers_the_distillation_loss():
    inputs, labels, teacher = fixed_data()
    model = small_model()
    settings = DistillSettings(batch_size=8, beta=10.0)
    optimizer = protocol.make_optimizer(model, lr=0.01, momentum=0.9, weight_decay=0.0)
    before = mean_distillation_loss(model, inputs, teacher, settings)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        protocol.directional_pass(model, optimizer, inputs, labels, teacher, settings=settings,
                                  generator=generator)
    after = mean_distillation_loss(model, inputs, teacher, settings)
    assert after < 0.5 * before, (before, after)


def test_leaf_pass_uses_real_data():
    inputs, labels, teacher = fixed_data()
    settings = DistillSettings(batch_size=8)
    results = []
    for real in (None, (torch.zeros_like(inputs), labels)):
        model = small_model()
        optimizer = protocol.make_optimizer(model, lr=0.05, momentum=0.0, weight_decay=0.0)
        results.append(protocol.directional_pass(model, optimizer, inputs, labels, teacher,
                                                 settings=settings,
                                                 generator=torch.Generator().manual_seed(0),
                                                 real=real))
    assert results[0] != pytest.approx(results[1])


def test_directional_pass_rejects_misaligned_teacher():
    inputs, labels, teacher = fixed_data()
    model = small_model()
    optimizer = protocol.make_optimizer(model, lr=0.1, momentum=0.0, weight_decay=0.0)
    with pytest.raises(ValueError, match="differ in length"):
        protocol.directional_pass(model, optimizer, inputs, labels, teacher[:-1],
                                  settings=DistillSettings(), generator=torch.Generator())


def one_by_one_model(seed=0):
    """torchvision's ImageNet ResNet-18 on 1x28x28: its 7x7 stride-2 stem and max-pool
    leave a 1x1 last feature map, where BatchNorm fails on a one-sample batch."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def one_by_one_data(n):
    generator = torch.Generator().manual_seed(2)
    inputs = torch.rand(n, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    return inputs, labels, torch.randn(n, 10, generator=generator)


def count_forward_samples(model):
    """Returns a list that gets the batch size of every forward call of ``model``."""
    seen = []
    model.register_forward_hook(lambda module, args, output: seen.append(len(args[0])))
    return seen


@pytest.mark.parametrize("count,batch_size,sizes", [
    (17, 8, [8, 9]), (16, 8, [8, 8]), (9, 8, [9]), (7, 8, [7]), (5, 2, [2, 3]),
    (2, 8, [2]), (1, 8, [1]), (0, 8, [])])
def test_batch_sizes_fold_a_trailing_single_sample(count, batch_size, sizes):
    assert protocol.batch_sizes(count, batch_size) == sizes


def test_batch_sizes_reject_batches_of_one():
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        protocol.batch_sizes(10, 1)


def test_train_mode_teacher_on_a_1x1_feature_map_with_a_trailing_single_sample():
    inputs, _, _ = one_by_one_data(2 * 8 + 1)
    out = protocol.teacher_logits(one_by_one_model(), inputs, batch_size=8, mode="train")
    assert out.shape == (17, 10) and torch.isfinite(out).all()


def test_train_mode_teacher_gives_a_lone_sample_eval_mode_logits():
    inputs, _, _ = one_by_one_data(1)
    model = one_by_one_model()
    train_mode = protocol.teacher_logits(model, inputs, batch_size=8, mode="train")
    eval_mode = protocol.teacher_logits(model, inputs, batch_size=8, mode="eval")
    assert torch.equal(train_mode, eval_mode)


@pytest.mark.parametrize("leaf", [False, True])
def test_directional_pass_trains_on_every_sample_of_a_1x1_feature_map_model(leaf):
    inputs, labels, teacher = one_by_one_data(2 * 8 + 1)
    model = one_by_one_model()
    seen = count_forward_samples(model)
    optimizer = protocol.make_optimizer(model, lr=0.01, momentum=0.0, weight_decay=0.0)
    real = (inputs.flip(0), labels) if leaf else None
    loss = protocol.directional_pass(model, optimizer, inputs, labels, teacher,
                                     settings=DistillSettings(batch_size=8),
                                     generator=torch.Generator().manual_seed(0), real=real)
    per_sample = 2 if leaf else 1  # a leaf's forward holds its real and its bridge samples
    assert seen == [8 * per_sample, 9 * per_sample] and math.isfinite(loss)


def test_a_trailing_single_sample_joins_the_batch_before_it():
    inputs, labels, teacher = fixed_data(n=9)
    model = small_model()
    seen = count_forward_samples(model)
    optimizer = protocol.make_optimizer(model, lr=0.1, momentum=0.0, weight_decay=0.0)
    protocol.directional_pass(model, optimizer, inputs, labels, teacher,
                              settings=DistillSettings(batch_size=8), generator=torch.Generator())
    assert seen == [9]


def test_a_pass_over_a_lone_sample_is_skipped():
    inputs, labels, teacher = fixed_data(n=1)
    model = small_model()
    weights = [p.clone() for p in model.parameters()]
    optimizer = protocol.make_optimizer(model, lr=0.1, momentum=0.0, weight_decay=0.0)
    loss = protocol.directional_pass(model, optimizer, inputs, labels, teacher,
                                     settings=DistillSettings(batch_size=8),
                                     generator=torch.Generator())
    assert loss == 0.0
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))


def diverging_pass(model, lr=1e30):
    inputs, labels, teacher = fixed_data()
    optimizer = protocol.make_optimizer(model, lr=lr, momentum=0.0, weight_decay=0.0)
    return inputs, labels, teacher, optimizer


def test_a_non_finite_loss_stops_training():
    model = small_model()
    inputs, labels, teacher, optimizer = diverging_pass(model)
    with pytest.raises(TrainingError, match=r"training diverged: loss (nan|inf) at batch \d+ of 8"):
        protocol.directional_pass(model, optimizer, inputs, labels, teacher,
                                  settings=DistillSettings(batch_size=8),
                                  generator=torch.Generator().manual_seed(0))


def test_a_diverged_node_names_itself_and_its_lr_and_the_error_pickles():
    model = small_model()
    inputs, labels, teacher, optimizer = diverging_pass(model)
    decoder = autoencoder.Decoder(1)
    node = NodeState("edge-1", model, decoder=decoder, settings=DistillSettings(batch_size=8),
                     optimizer=optimizer, seed=0)
    codes = torch.rand(len(labels), autoencoder.CODE_CHANNELS, 2, 2).numpy()
    node.add_bridge_samples(BridgeSamples("device-0", codes, labels.numpy()))
    with pytest.raises(TrainingError) as info:
        node.learn(["device-0"], teacher)
    message = str(info.value)
    assert message.startswith("edge-1: training diverged: loss ")
    assert message.endswith("; lower training.lr (1e+30)")
    assert str(pickle.loads(pickle.dumps(info.value))) == message  # Ray ships it to the driver


def test_weight_decay_and_momentum_are_applied():
    model = nn.Linear(3, 1, bias=False)
    nn.init.constant_(model.weight, 1.0)
    optimizer = protocol.make_optimizer(model, lr=0.1, momentum=0.9, weight_decay=0.5)
    model(torch.zeros(1, 3)).sum().backward()  # zero gradient: only weight decay moves weights
    optimizer.step()
    assert model.weight.detach() == pytest.approx(torch.full((1, 3), 1 - 0.1 * 0.5))
    assert "momentum_buffer" in optimizer.state[model.weight]


def test_teacher_logits_need_no_grad_and_restore_mode():
    inputs, _, _ = fixed_data()
    model = small_model()
    model.eval()
    weights = [p.clone() for p in model.parameters()]
    out = protocol.teacher_logits(model, inputs, batch_size=16, mode="train")
    assert out.shape == (64, 5) and not out.requires_grad
    assert not model.training
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))


def test_teacher_modes_differ_for_batchnorm_models():
    inputs, _, _ = fixed_data()
    model = small_model()
    train_mode = protocol.teacher_logits(model, inputs, batch_size=16, mode="train")
    model = small_model()
    eval_mode = protocol.teacher_logits(model, inputs, batch_size=16, mode="eval")
    assert not torch.allclose(train_mode, eval_mode)


def test_evaluate_uses_eval_mode_and_restores_it():
    inputs, labels, _ = fixed_data()
    model = small_model()
    model.train()
    first = protocol.evaluate(model, inputs, labels, batch_size=7)
    second = protocol.evaluate(model, inputs, labels, batch_size=64)
    assert model.training
    # eval mode: the result does not depend on how the test set is batched
    assert first[0] == second[0] and first[1] == pytest.approx(second[1], rel=1e-5)
    assert 0.0 <= first[0] <= 1.0


def test_a_checkpoint_from_before_fused_sgd_keeps_the_optimizer_fused():
    from rayagg.learning.protocol import load_optimizer_state, make_optimizer

    model = torch.nn.Linear(3, 2)
    old = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # unfused, as saved before
    model(torch.randn(4, 3)).sum().backward()
    old.step()
    fused = make_optimizer(model, lr=0.1, momentum=0.9, weight_decay=0.0)
    load_optimizer_state(fused, old.state_dict())
    assert fused.param_groups[0]["fused"] is True
    assert torch.equal(fused.state[model.weight]["momentum_buffer"], old.state[model.weight]["momentum_buffer"])


def node_with_bridge(name, leaves, *, n=12, local=False):
    """A node of the small model holding ``n`` bridge samples of each of ``leaves``."""
    model = small_model()
    optimizer = protocol.make_optimizer(model, lr=0.01, momentum=0.9, weight_decay=0.0)
    labels = torch.randint(0, 5, (n,), generator=torch.Generator().manual_seed(2))
    data = LocalData(torch.rand(n, 1, 8, 8), labels) if local else None
    node = NodeState(name, model, decoder=autoencoder.Decoder(1), settings=DistillSettings(batch_size=8),
                     optimizer=optimizer, seed=0, local=data)
    for leaf in leaves:
        codes = torch.rand(n, autoencoder.CODE_CHANNELS, 2, 2).numpy()
        node.add_bridge_samples(BridgeSamples(leaf, codes, labels.numpy()))
    return node


def test_a_leaf_keeps_no_gradients_and_no_second_copy_of_its_samples_between_calls():
    node = node_with_bridge("device-0", ["device-0"], local=True)
    node.logits(["device-0"])
    node.learn(["device-0"], torch.randn(12, 5))
    held = node.held_bytes()
    params = sum(p.numel() * 4 for p in node.model.parameters())
    assert held["gradients"] == 0 and held["batches"] == 0
    assert held["optimizer"] == params  # the momentum, which must carry over
    assert held["decoded"] == 12 * 1 * 8 * 8 * 4


def test_a_parent_caches_the_concatenation_of_several_leaves_only():
    node = node_with_bridge("edge-0", ["device-0", "device-1"])
    node.learn(["device-0"], torch.randn(12, 5))
    assert node.held_bytes()["batches"] == 0
    node.learn(["device-0", "device-1"], torch.randn(24, 5))
    assert node.held_bytes()["batches"] == node.held_bytes()["decoded"] + 24 * 8
