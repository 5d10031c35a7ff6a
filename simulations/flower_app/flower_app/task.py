"""The app's own data and model. Replace them with yours: any arrays, any Keras model.

The data is split once, the same way in the ServerApp and in every ClientApp (seeded): each client trains on
its partition, the population records are never trained on (the audit's non-members), the test records measure
the global model.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from fedaudit.flower import FederatedData


@lru_cache(maxsize=4)
def load_data(num_partitions: int, partitioner: str = "iid", population_fraction: float = 0.25,
              test_fraction: float = 0.2, seed: int = 0) -> FederatedData:
    """scikit-learn's bundled digits (8x8 images as 64 features in [0, 1]), split among ``num_partitions``."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return FederatedData.partition((x / 16.0).astype(np.float32), y, num_partitions, partitioner,
                                   population_fraction=population_fraction, test_fraction=test_fraction, seed=seed,
                                   name="digits")


def load_model(learning_rate: float = 0.003, seed: int = 0):
    """A Keras model as a Flower user writes it: softmax output, compiled, trained with ``fit``."""
    import keras

    init = [keras.initializers.GlorotUniform(seed=seed + i) for i in range(3)]
    model = keras.Sequential([
        keras.Input(shape=(64,)),
        keras.layers.Dense(128, activation="relu", kernel_initializer=init[0]),
        keras.layers.Dense(64, activation="relu", kernel_initializer=init[1]),
        keras.layers.Dense(10, activation="softmax", kernel_initializer=init[2]),
    ])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def data_from_config(run_config, num_partitions: int) -> FederatedData:
    return load_data(int(num_partitions), str(run_config["partitioner"]), float(run_config["population-fraction"]),
                     float(run_config["test-fraction"]), int(run_config["seed"]))
