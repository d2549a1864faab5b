"""The network of Geena Kim's lecture notes "Math behind Neural Network Training" on the
Wisconsin breast-cancer data: 30 features -> 16 sigmoid units -> 1 sigmoid output, binary
cross-entropy, minibatch SGD with momentum.

    python examples/breast_cancer.py --device cpu      # or --device cuda
"""

import argparse

from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

import gradcore as gc

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
parser.add_argument("--epochs", type=int, default=50)
args = parser.parse_args()

X, y = load_breast_cancer(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
mean, std = X_train.mean(axis=0), X_train.std(axis=0)  # statistics of the training split only
X_train, X_test = (X_train - mean) / std, (X_test - mean) / std

params = gc.nn.init_mlp([30, 16, 1], seed=0, device=args.device)


def loss(params, x, y):
    probability = gc.sigmoid(gc.nn.mlp(params, x))  # sigmoid hidden layer, sigmoid output
    return gc.nn.binary_cross_entropy(probability, y)


def accuracy(params, x, y):
    return gc.nn.accuracy(gc.nn.mlp(params, x), y)


history = gc.train.fit(
    loss,
    params,
    X_train,
    y_train,
    optimizer=gc.optim.SGD(learning_rate=0.1, momentum=0.9),
    epochs=args.epochs,
    batch_size=32,
    device=args.device,
    validation_data=(X_test, y_test),
    metrics=[accuracy],
)
print(f"test accuracy after {history.epochs} epochs: {history.metrics['val_accuracy'][-1]:.3f}")
history.plot("breast_cancer.png")
print("curves written to breast_cancer.png")
