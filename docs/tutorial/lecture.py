"""The lecture "Math behind Neural Network Training" (Geena Kim), run with gradcore.

    python docs/tutorial/lecture.py [--out DIR]

Each part of the lecture, in its order: the perceptron rule and the delta rule, the chain rule
on the slide's graph (drawn as the slide draws it), backpropagation through a sigmoid hidden
layer checked against the closed form derived on the slides, the ``defvjp`` derivative table,
stochastic gradient descent as Algorithm 8.1, momentum and Nesterov, and the adaptive
optimizers. Every result is checked where it is printed: a wrong number stops the script. The
figures go to ``--out`` (default: beside this file): ``chain_rule.dot`` (and ``chain_rule.png``
where Graphviz's ``dot`` is installed) and ``optimizers.png``. CI runs it
(tests/test_tutorial.py).
"""

# ruff: noqa: N803, N806 - X is a data matrix, W a weight matrix, as on the slides

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import numpy as np

import gradcore as gc
from gradcore import defvjp, primitive, unbroadcast


def section(title: str) -> None:
    print(f"\n=== {title}")


def separable_points(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two clouds of 2-D points on either side of the line x1 + x2 = 1, labels -1 and +1."""
    rng = np.random.default_rng(seed)
    y = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    X = rng.normal(scale=0.4, size=(n, 2)) + np.where(y[:, None] > 0, 1.5, -0.5)
    return X, y


# ---------------------------------------------------------------------------------------------
# 1. The perceptron rule and the delta rule


def perceptron_by_hand(X: np.ndarray, y: np.ndarray, epochs: int) -> tuple[np.ndarray, list]:
    """The slide's algorithm: cycle through the instances, update W only on a mistake:
    W = W + X_i for a positive instance, W = W - X_i for a negative one (bias input last)."""
    X = np.hstack([X, np.ones((len(X), 1))])
    W = np.zeros(X.shape[1])
    mistakes = []
    for _ in range(epochs):
        count = 0
        for X_i, y_i in zip(X, y):
            if y_i * (W @ X_i) <= 0:  # misclassified (or on the line)
                W = W + X_i if y_i > 0 else W - X_i
                count += 1
        mistakes.append(count)
        if count == 0:
            break
    return W, mistakes


def delta_rule_by_hand(X: np.ndarray, y: np.ndarray, alpha: float, epochs: int) -> np.ndarray:
    """The slide's delta rule, instance by instance: y_hat_i = sum_j w_j X_ij, then
    w_j <- w_j - alpha (y_hat_i - y_i) X_ij (bias input last)."""
    X = np.hstack([X, np.ones((len(X), 1))])
    w = np.zeros(X.shape[1])
    for _ in range(epochs):
        for X_i, y_i in zip(X, y):
            y_hat = w @ X_i
            w = w - alpha * (y_hat - y_i) * X_i
    return w


def learning_rules() -> None:
    section("1. Perceptron rule and delta rule on a separable set")
    X, y = separable_points()
    W, mistakes = perceptron_by_hand(X, y, epochs=20)
    W_gc, mistakes_gc = gc.rules.perceptron(gc.array(X, dtype="float64"), gc.array(y), epochs=20)
    print(f"perceptron, by hand:           W = {np.round(W, 3)}, mistakes per epoch {mistakes}")
    print(f"gc.rules.perceptron:           W = {np.round(gc.to_numpy(W_gc), 3)}, {mistakes_gc}")
    assert mistakes[-1] == 0 and mistakes == mistakes_gc
    np.testing.assert_allclose(gc.to_numpy(W_gc), W)
    accuracy = np.mean(np.sign(np.hstack([X, np.ones((len(X), 1))]) @ W) == y)
    print(f"perceptron training accuracy: {accuracy:.0%} (separable: every point right)")
    assert accuracy == 1.0

    w = delta_rule_by_hand(X, y, alpha=0.05, epochs=30)
    w_gc = gc.to_numpy(gc.rules.delta_rule(gc.array(X, dtype="float64"), gc.array(y), 0.05, 30))
    np.testing.assert_allclose(w_gc, w, rtol=1e-10)
    accuracy = np.mean(np.sign(np.hstack([X, np.ones((len(X), 1))]) @ w) == y)
    print(f"delta rule, by hand and gc.rules.delta_rule: w = {np.round(w, 3)}")
    print(f"delta rule training accuracy (sign of the linear unit): {accuracy:.0%}")
    assert accuracy >= 0.95


# ---------------------------------------------------------------------------------------------
# 2. The chain rule on the slide's graph


def lecture_graph(x, y, z):
    q = x + y
    return q * z


def chain_rule(out: Path) -> None:
    section("2. The chain rule on q = x + y, f = q * z at x = -2, y = 5, z = -4")
    x, y, z = -2.0, 5.0, -4.0
    f, (df_dx, df_dy, df_dz) = gc.value_and_grad(lecture_graph, argnum=(0, 1, 2))(x, y, z)
    q = x + y
    by_hand = {"df/dx": z * 1.0, "df/dy": z * 1.0, "df/dz": q}  # df/dq dq/dx = z * 1
    print(f"f = {f}   (q = {q})")
    for name, value in zip(by_hand, (df_dx, df_dy, df_dz)):
        print(f"{name} = {value:5}   by hand: {by_hand[name]:5}")
        assert value == by_hand[name]
    dot = gc.to_dot(lecture_graph, x, y, z)
    path = out / "chain_rule.dot"
    path.write_text(dot)
    print(f"the graph, each node with its value (green) and gradient (red): {path}")
    if shutil.which("dot"):
        subprocess.run(["dot", "-Tpng", str(path), "-o", str(path.with_suffix(".png"))], check=True)
        print(f"rendered with Graphviz: {path.with_suffix('.png')}")
    else:
        print("Graphviz's `dot` is not installed: render it with `dot -Tpng chain_rule.dot`")


# ---------------------------------------------------------------------------------------------
# 3. Backpropagation through a sigmoid hidden layer, against the slides' closed form


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def backpropagation() -> None:
    section("3. Backpropagation: sigmoid hidden layer, sigmoid output, cross-entropy")
    rng = np.random.default_rng(1)
    X = rng.normal(size=4)  # one instance with 4 inputs, as on the slide: X_i
    y = 1.0
    params = gc.nn.init_mlp([4, 3, 1], seed=0, dtype="float64")  # W^(x): 4x3, W^(h): 3x1

    def loss(params, x, y):
        a_o = gc.sigmoid(gc.nn.mlp(params, x[None, :]))[0, 0]
        return -(y * gc.log(a_o) + (1.0 - y) * gc.log(1.0 - a_o))  # cross-entropy

    grads = gc.grad(loss)(params, gc.array(X, dtype="float64"), y)

    # The slides' derivation: z^(h) = X W^(x) + b, a^(h) = sigma(z^(h)), z^(o) = a^(h) W^(h) + b
    W_x, b_x = gc.to_numpy(params[0]["W"]), gc.to_numpy(params[0]["b"])
    W_h, b_h = gc.to_numpy(params[1]["W"])[:, 0], gc.to_numpy(params[1]["b"])[0]
    a_h = sigmoid(X @ W_x + b_x)
    a_o = sigmoid(a_h @ W_h + b_h)
    # dL/da^(o) (y/a - (1-y)/(1-a)) is the log-likelihood's; the cross-entropy is its negative
    dL_da = -(y / a_o - (1 - y) / (1 - a_o))
    dL_dW_x = dL_da * a_o * (1 - a_o) * np.outer(X, W_h * a_h * (1 - a_h))  # [i, j]
    dL_dW_h = dL_da * a_o * (1 - a_o) * a_h
    for name, got, closed_form in [
        ("dL/dW^(x)", gc.to_numpy(grads[0]["W"]), dL_dW_x),
        ("dL/dW^(h)", gc.to_numpy(grads[1]["W"])[:, 0], dL_dW_h),
    ]:
        difference = np.max(np.abs(got - closed_form))
        print(f"{name}: gradcore vs the slides' closed form, largest difference {difference:.1e}")
        assert difference < 1e-12
    print("dL/dW^(x)_ij = dL/da^(o) sigma'(z^(o)) W^(h)_j sigma'(z^(h)_j) X_i, for every i, j")


# ---------------------------------------------------------------------------------------------
# 4. The derivative table: defvjp


@primitive
def slide_add(x, y):
    return x + y


@primitive
def slide_multiply(x, y):
    return x * y


@primitive
def slide_subtract(x, y):
    return x - y


@primitive
def slide_divide(x, y):
    return x / y


# The slide's table, rule for rule: one vector-Jacobian product per argument.
defvjp(slide_add, lambda g, ans, x, y: unbroadcast(x, g), lambda g, ans, x, y: unbroadcast(y, g))
defvjp(slide_multiply,
       lambda g, ans, x, y: unbroadcast(x, y * g),
       lambda g, ans, x, y: unbroadcast(y, x * g))  # fmt: skip
defvjp(slide_subtract,
       lambda g, ans, x, y: unbroadcast(x, g),
       lambda g, ans, x, y: unbroadcast(y, -g))  # fmt: skip
defvjp(slide_divide,
       lambda g, ans, x, y: unbroadcast(x, g / y),
       lambda g, ans, x, y: unbroadcast(y, -g * x / y**2))  # fmt: skip


def derivative_table() -> None:
    section("4. The defvjp table: four primitives defined as on the slide")
    rng = np.random.default_rng(2)
    x = gc.array(rng.normal(size=(3, 2)), dtype="float64")
    y = gc.array(rng.uniform(1.0, 2.0, size=2), dtype="float64")  # broadcast against x
    for mine, theirs in [
        (slide_add, gc.add),
        (slide_multiply, gc.multiply),
        (slide_subtract, gc.subtract),
        (slide_divide, gc.divide),
    ]:
        # the slide's table is reverse mode's: check the VJPs (a defjvp would add forward mode)
        gc.check_grads(lambda a, b, op=mine: gc.sum(gc.sin(op(a, b))), x, y, order=2,
                       modes=("rev",))  # fmt: skip
        ours = gc.grad(lambda a, b, op=mine: gc.sum(gc.sin(op(a, b))), argnum=(0, 1))(x, y)
        lib = gc.grad(lambda a, b, op=theirs: gc.sum(gc.sin(op(a, b))), argnum=(0, 1))(x, y)
        for a, b in zip(ours, lib):
            np.testing.assert_allclose(gc.to_numpy(a), gc.to_numpy(b), rtol=1e-12)
        print(f"{mine.name}: rules pass check_grads (order 2) and match gc.{theirs.name}")


# ---------------------------------------------------------------------------------------------
# 5. Stochastic gradient descent: Algorithm 8.1, momentum, Nesterov, adaptive optimizers

EPOCHS, BATCH = 30, 32


def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    """The lecture's data set, standardised; labels as a column of 0/1."""
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    return X.astype(np.float32), y.astype(np.float32)[:, None]


def network_loss(params, x, y):
    """The lecture's network: sigmoid hidden layer, sigmoid output, binary cross-entropy."""
    return gc.nn.binary_cross_entropy(gc.sigmoid(gc.nn.mlp(params, x)), y)


def algorithm_8_1(X: np.ndarray, y: np.ndarray, schedule) -> tuple[list, list]:
    """Algorithm 8.1 written out: sample a minibatch, estimate the gradient, theta <- theta -
    eps_k g, k <- k + 1. Returns the loss on the whole set after each epoch, and the params."""
    theta = gc.nn.init_mlp([30, 16, 1], seed=0)
    rng = np.random.default_rng(0)
    gradient = gc.grad(network_loss)
    k, losses = 0, []
    for _ in range(EPOCHS):
        order = rng.permutation(len(X))
        for start in range(0, len(X), BATCH):
            rows = order[start : start + BATCH]
            g = gradient(theta, X[rows], y[rows])  # (1/m) sum_i grad L(f(x_i; theta), y_i)
            for layer, layer_g in zip(theta, g):
                for name in layer:
                    layer[name] -= schedule(k) * layer_g[name]
            k += 1
        losses.append(float(network_loss(theta, X, y)))
    return losses, theta


def train(X: np.ndarray, y: np.ndarray, optimizer) -> list[float]:
    """The same loop with an optimizer's step in place of the update."""
    params = gc.nn.init_mlp([30, 16, 1], seed=0)
    rng = np.random.default_rng(0)
    gradient = gc.grad(network_loss)
    losses = []
    for _ in range(EPOCHS):
        order = rng.permutation(len(X))
        for start in range(0, len(X), BATCH):
            rows = order[start : start + BATCH]
            optimizer.step(params, gradient(params, X[rows], y[rows]))
        losses.append(float(network_loss(params, X, y)))
    return losses


def optimizers(out: Path) -> None:
    section("5. SGD (Algorithm 8.1), momentum, Nesterov and adaptive optimizers")
    X, y = breast_cancer()
    steps = EPOCHS * -(-len(X) // BATCH)
    schedule = gc.optim.linear_decay(0.5, 0.005, steps)  # eps_k from eps_0 to eps_tau
    curves = {"Algorithm 8.1, eps 0.5 -> 0.005": algorithm_8_1(X, y, schedule)[0]}
    # gc.optim.SGD with the same schedule is the same algorithm: the same losses
    same = train(X, y, gc.optim.SGD(learning_rate=schedule))
    np.testing.assert_allclose(same, curves["Algorithm 8.1, eps 0.5 -> 0.005"], rtol=1e-4)
    print("gc.optim.SGD(learning_rate=linear_decay(...)) follows Algorithm 8.1 step for step")
    runs = {
        "SGD, eps 0.05": gc.optim.SGD(learning_rate=0.05),
        "momentum 0.9, eps 0.05": gc.optim.SGD(learning_rate=0.05, momentum=0.9),
        "Nesterov 0.9, eps 0.05": gc.optim.SGD(learning_rate=0.05, momentum=0.9, nesterov=True),
    }
    # the optimizers issue's adaptive methods, where this version of gradcore has them
    for name in ("Adagrad", "RMSprop", "Adam", "AdamW"):
        if hasattr(gc.optim, name):
            runs[f"{name}, lr 0.01"] = getattr(gc.optim, name)(learning_rate=0.01)
        else:
            print(f"gc.optim.{name} is not in this version of gradcore: left out")
    for label, optimizer in runs.items():
        curves[label] = train(X, y, optimizer)
    print(f"loss on the whole set after {EPOCHS} epochs of minibatches of {BATCH}:")
    for label, losses in curves.items():
        print(f"  {label:34} {losses[0]:.4f} after epoch 1, {losses[-1]:.4f} at the end")
        assert losses[-1] < losses[0] or losses[0] < 0.1, label
    assert curves["momentum 0.9, eps 0.05"][-1] < curves["SGD, eps 0.05"][-1]
    print("momentum reaches a lower loss than plain SGD at the same learning rate")
    plot(curves, out / "optimizers.png")


def plot(curves: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, losses in curves.items():
        ax.plot(range(1, len(losses) + 1), losses, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy on the training set")
    ax.set_title("The lecture's 30-16-1 network on breast cancer, one optimizer per curve")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"loss curves: {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="figure folder")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    learning_rules()
    chain_rule(args.out)
    backpropagation()
    derivative_table()
    optimizers(args.out)


if __name__ == "__main__":
    main()
