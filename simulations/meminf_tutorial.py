"""ML Privacy Meter's whitebox tutorial, run with fedaudit: only the import changes.

The tutorial trained a Purchase100 network (``purchase-fcn``), wrote its data in ML Privacy Meter's text
format (one record per line: features, ``;``, label) with the members in an ``.npy`` file, and attacked it
with ``layers_to_exploit=[5]`` and ``gradients_to_exploit=[3, 4, 5]``. This script makes the same files from
fedaudit's ``synthetic-purchase`` generator (no download), trains the target, and runs the attack::

    python simulations/meminf_tutorial.py --out runs/meminf-tutorial

Point ``attack_data`` at your own ``dataset.txt`` and ``members.txt.npy`` to audit your model instead.
The log directory gets the plots (privacy_risk.png, roc.png, gradient_norm.png, ...), member_probs.npy,
nonmember_probs.npy and TensorBoard scalars, as the old tool wrote them, scored on held-out records only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import fedaudit.attacks.meminf as meminf           # was: import ml_privacy_meter ... attack.meminf
from fedaudit.data import attack_data, load_dataset, write_privacy_meter_txt
from fedaudit.models import build_model, train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/meminf-tutorial", help="folder for the data files and the logs")
    parser.add_argument("--members", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    data = load_dataset("synthetic-purchase", seed=args.seed, records=4 * args.members, features=600, classes=20)
    write_privacy_meter_txt(out / "dataset_purchase.txt", data.x, data.y)
    lines = (out / "dataset_purchase.txt").read_text().splitlines()[: args.members]
    np.save(out / "members.txt.npy", np.array([line.split(";") for line in lines]))

    target = build_model("purchase-fcn", data.input_shape, data.num_classes, seed=args.seed)
    train_model(target, data.x[: args.members], data.y[: args.members], epochs=40, batch_size=64, seed=args.seed)

    handler = attack_data(dataset_path=out / "dataset_purchase.txt", member_dataset_path=out / "members.txt.npy",
                          batch_size=64, attack_percentage=50, input_shape=(600,))
    started = time.time()
    attack = meminf.initialize(target_train_model=target, target_attack_model=target, train_datahandler=handler,
                               attack_datahandler=handler, optimizer="adam", layers_to_exploit=[5],
                               gradients_to_exploit=[3, 4, 5], exploit_loss=True, exploit_label=True,
                               learning_rate=0.0001, epochs=30, batch_size=64, log_dir=out / "logs")
    attack.train_attack()
    result = attack.test_attack()
    print(f"whitebox attack: AUC {result.auc:.3f}, attack accuracy {result.accuracy:.3f}, "
          f"TPR at 1% FPR {result.tpr_at_1pct:.3f} ({time.time() - started:.0f} s); logs in {out / 'logs'}")


if __name__ == "__main__":
    main()
