"""A softmax classifier for 8x8 handwritten digits: 64 pixels -> 32 tanh units -> 10 logits,
softmax cross-entropy, SGD with Nesterov momentum and a linearly decaying learning rate.

    python examples/digits.py --device cpu      # or --device cuda
"""

import argparse

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import gradcore as gc

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
parser.add_argument("--epochs", type=int, default=30)
args = parser.parse_args()

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
X_train, X_test = X_train / 16.0, X_test / 16.0  # pixel intensities are 0..16

params = gc.nn.init_mlp([64, 32, 10], seed=0, device=args.device)


def loss(params, x, labels):
    return gc.nn.softmax_cross_entropy(gc.nn.mlp(params, x, activation=gc.tanh), labels)


def accuracy(params, x, labels):
    return gc.nn.accuracy(gc.nn.mlp(params, x, activation=gc.tanh), labels)


steps = args.epochs * -(-len(X_train) // 32)  # updates in the whole run
history = gc.train.fit(
    loss,
    params,
    X_train,
    y_train,
    optimizer=gc.optim.SGD(gc.optim.linear_decay(0.1, 0.01, steps), momentum=0.9, nesterov=True),
    epochs=args.epochs,
    batch_size=32,
    device=args.device,
    validation_data=(X_test, y_test),
    metrics=[accuracy],
)
print(f"test accuracy after {history.epochs} epochs: {history.metrics['val_accuracy'][-1]:.3f}")
