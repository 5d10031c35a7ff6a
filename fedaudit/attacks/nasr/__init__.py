"""The white-box attack network of Nasr, Shokri and Houmansadr (IEEE S&P 2019), which ``meminf`` trains.

(``whitebox`` in ``[audit] attacks`` and ``--attacks`` is another attack: the logistic regression of
:mod:`fedaudit.attacks.fitted` on the auditor's features. ``fedaudit.attacks.whitebox`` is this package's former
import path.)

Function-level core (what the federated auditor reuses, no data handler needed):

- :func:`whitebox_features` computes, once, the per-example signals the attack reads (outputs of the
  exploited layers, loss, label, kernel gradients of the exploited layers; dense gradients as their two
  factors) with :func:`fedaudit.signals.extract`; :func:`blackbox_features` is the same with only the
  last layer's output, the loss and the label;
- :func:`build_attack_network` builds the attack network for those features: one component per signal,
  concatenated into an encoder that ends in a membership probability;
- :func:`fit_attack` trains it on known members and non-members with binary cross-entropy (one traced
  training step on seeded batches, a callback that scores every epoch), choosing the epoch on a validation split
  carved from the known records; ``fitted.predict(features)`` scores;
- :func:`~fedaudit.attacks.nasr.stacking.stack` adds a second model on compact statistics of the same signals:
  a random forest (the score: the mean of the two membership probabilities) or gradient-boosted trees (the mean
  of the two log-odds).

ML Privacy Meter's API on top: :class:`WhiteBoxAttack` (also :class:`fedaudit.attacks.meminf.initialize`)
with ``train_attack()`` and ``test_attack()`` (``stack="forest"`` or ``"boosting"`` adds the second model);
test_attack writes the plots and arrays ML Privacy Meter wrote, for records the attack never trained on.

Modules, one job each: ``features`` (signals), ``preprocess`` (standardisation), ``network`` (the attack
network), ``training`` (fitting it), ``stacking`` (the forest or boosted trees beside it), ``api`` (``meminf``'s API).

How the network differs from ML Privacy Meter's 2021 code and Nasr et al. (2019): signals are computed
once, not every epoch; the gradient convolution of a dense kernel gradient ``a (x) d`` is computed from
the factors (filter f on row r: ``a[r] (d . w_f) + b_f``), so it costs O(filters (in + out)) per example;
what follows it is sized to the data: with ``size="auto"`` the convolution's responses are averaged over
the rows (32 filters -> 32 numbers -> FC 64) instead of flattened into a fully connected layer of
in x filters inputs (``size="paper"``, 2021's widths: 51,200 inputs into 2,024 units for a 512 x 256
kernel, 185 million parameters in the tutorial, which memorise a few hundred known records within a few
epochs); each input is standardised with statistics of the training split, gradients enter as their
direction plus their log-norm and the loss also as its logarithm (members' losses and gradients are
orders of magnitude smaller than non-members', which raw values hide from a network); training runs at
least ``min_steps`` steps (2021's tutorial made 150) and keeps the epoch with the best validation loss.
Weights start N(0, 0.01) as in the paper; Adam's epsilon is 1e-10 (see :data:`ATTACK_OPTIMIZERS`).
"""

from fedaudit.attacks.nasr.api import AttackResult, WhiteBoxAttack
from fedaudit.attacks.nasr.features import Component, WhiteboxFeatures, blackbox_features, whitebox_features
from fedaudit.attacks.nasr.network import AUTO, PAPER, GradientRowConv, build_attack_network, network_widths
from fedaudit.attacks.nasr.preprocess import Preprocessor
from fedaudit.attacks.nasr.training import ATTACK_OPTIMIZERS, FittedAttack, fit_attack, write_tensorboard

__all__ = ["Component", "WhiteboxFeatures", "whitebox_features", "blackbox_features", "Preprocessor",
           "GradientRowConv", "build_attack_network", "network_widths", "fit_attack", "FittedAttack", "write_tensorboard",
           "WhiteBoxAttack", "AttackResult", "ATTACK_OPTIMIZERS", "AUTO", "PAPER"]
