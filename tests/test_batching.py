"""A batch of steps in one host call: its arguments and per-step failures (pure, no Ray)."""
from rayagg.errors import NodeStoppedError
from rayagg.runtime.batching import Failed, Input, lift, run


class Ref:
    """Stands for a Ray object ref."""

    def __init__(self, name):
        self.name = name


def test_lift_moves_every_ref_to_the_top_level_in_order():
    a, b = Ref("a"), Ref("b")
    items, refs = lift([("edge-0", "learn", (["device-0"], a)), ("edge-1", "logits", (["device-2"],)),
                        ("cloud-0", "add_bridge_samples", (b, a))], lambda x: isinstance(x, Ref))
    assert refs == [a, b, a]
    assert items == [("edge-0", "learn", (["device-0"], Input(0))), ("edge-1", "logits", (["device-2"],)),
                     ("cloud-0", "add_bridge_samples", (Input(1), Input(2)))]


def calls_of(log, raising=()):
    def step(node, call, *args):
        log.append((node, call, args))
        if node in raising:
            raise raising[node]
        return f"{node}.{call}{args}"
    return step


def test_steps_run_in_order_with_their_inputs_put_back():
    log = []
    answers = run([("a", "logits", (1,)), ("b", "learn", (Input(1), Input(0)))], ["x", "y"], calls_of(log))
    assert log == [("a", "logits", (1,)), ("b", "learn", ("y", "x"))]
    assert answers == ["a.logits(1,)", "b.learn('y', 'x')"]


def test_a_failing_node_answers_failed_and_its_neighbours_carry_on():
    log, error = [], ValueError("diverged")
    items = [("a", "learn", ()), ("b", "learn", ()), ("a", "logits", ()), ("b", "logits", ())]
    answers = run(items, [], calls_of(log, raising={"a": error}))
    assert answers[0] == answers[2] == Failed("a", "learn", error)  # a's later step is skipped
    assert answers[1] == "b.learn()" and answers[3] == "b.logits()"
    assert [entry[:2] for entry in log] == [("a", "learn"), ("b", "learn"), ("b", "logits")]


def test_a_failed_input_fails_the_step_that_takes_it_and_no_other():
    stopped = Failed("device-1", "logits", NodeStoppedError("device-1", "stopped"))
    log = []
    answers = run([("edge-0", "learn", (Input(0),)), ("edge-1", "learn", (Input(1),)), ("edge-0", "logits", ())],
                  [stopped, "teacher"], calls_of(log))
    assert answers[0] is stopped  # edge-0's learn never ran: its later steps do, as one call each would
    assert answers[1] == "edge-1.learn('teacher',)" and answers[2] == "edge-0.logits()"
    assert log == [("edge-1", "learn", ("teacher",)), ("edge-0", "logits", ())]
