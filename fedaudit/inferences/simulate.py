"""The adversary's copy of a client's local training (TensorFlow): the scenario's model, optimizer, learning rate,
local epochs and batch size, run from the weights the server sent out. The label inference trains shadow clients
with it on population records, and reads any model's outputs through it.
"""

from __future__ import annotations

import numpy as np


class LocalSimulator:
    """One Keras model and one compiled trainer, reused for every simulated client of a run."""

    def __init__(self, scenario, input_shape, num_classes: int):
        from fedaudit.models import build_model
        from fedaudit.models.training import Trainer

        f = scenario.federation
        self.epochs, self.batch_size = int(f.local_epochs), int(f.batch_size)
        self.learning_rate, self.optimizer = float(f.learning_rate), f.optimizer
        model = build_model(scenario.model.name, tuple(input_shape), int(num_classes), seed=f.seed,
                            **dict(scenario.model.options))
        self.trainer = Trainer(model, f.optimizer, f.learning_rate)
        self._softmax = None

    def steps(self, n: int) -> int:
        """Local optimisation steps of a client with ``n`` records."""
        return self.epochs * max(1, -(-int(n) // self.batch_size))

    def train(self, weights, x, y, seed: int) -> list:
        """A client's new weights after local training on (x, y) from ``weights``."""
        self.trainer.set_weights(weights)
        self.trainer.fit(x, y, epochs=self.epochs, batch_size=self.batch_size, rng=np.random.default_rng(seed))
        return self.trainer.get_weights()

    def probs(self, weights, x) -> np.ndarray:
        """Softmax outputs (n, C) of the model with ``weights`` on ``x``."""
        import tensorflow as tf

        if self._softmax is None:       # traced once: the label inference reads hundreds of models a round
            model = self.trainer.model
            spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
            self._softmax = tf.function(lambda batch: tf.nn.softmax(model(batch, training=False)),
                                        input_signature=[spec])
        self.trainer.set_weights(weights)
        return self._softmax(np.asarray(x, dtype=np.float32)).numpy().astype(np.float64)
