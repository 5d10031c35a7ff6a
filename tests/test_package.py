"""The package's attributes, as ML Privacy Meter's users reach them: lazily, without TensorFlow or Ray at import."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HEAVY = ("tensorflow", "keras", "ray", "flwr")


def run_python(code: str, cwd=None, timeout: int = 300) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=timeout, cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_bare_import_loads_no_tensorflow_and_attributes_resolve_lazily():
    out = run_python(f"""
        import json, sys
        import fedaudit
        heavy = {HEAVY!r}
        after_import = sorted(m for m in heavy if m in sys.modules)
        audit_model = fedaudit.attacks.audit_model          # attribute of a lazily loaded subpackage
        handler = fedaudit.data.attack_data
        after_attributes = sorted(m for m in heavy if m in sys.modules)
        initialize = fedaudit.attacks.meminf.initialize       # the whitebox attack: this one needs TensorFlow
        from fedaudit.attacks.whitebox import WhiteBoxAttack
        from fedaudit.data.handler import attack_data
        print(json.dumps({{"after_import": after_import, "after_attributes": after_attributes,
                          "audit_model": audit_model.__module__ + "." + audit_model.__name__,
                          "handler_is_class": handler is attack_data, "initialize": initialize is WhiteBoxAttack,
                          "unknown": not hasattr(fedaudit, "no_such_thing")}}))
    """)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["after_import"] == [] and seen["after_attributes"] == []
    assert seen["audit_model"] == "fedaudit.attacks.audit.audit_model"
    assert seen["handler_is_class"] and seen["initialize"] and seen["unknown"]


TUTORIAL_2021 = """
    # ML Privacy Meter's 2021 whitebox tutorial, with only the import changed (and a small, fast target).
    import sys
    import numpy as np
    import fedaudit as ml_privacy_meter

    data = ml_privacy_meter.data.load_dataset("synthetic-purchase", seed=0, records=320, features=40, classes=4,
                                              flip=0.4)
    ml_privacy_meter.data.write_privacy_meter_txt("dataset_purchase.txt", data.x, data.y)
    lines = open("dataset_purchase.txt").read().splitlines()[:80]
    np.save("members.txt.npy", np.array([line.split(";") for line in lines]))
    cmodelA = ml_privacy_meter.models.build_model("purchase-fcn", data.input_shape, data.num_classes, seed=0)
    ml_privacy_meter.models.train_model(cmodelA, data.x[:80], data.y[:80], epochs=20, batch_size=32, seed=0)

    datahandlerA = ml_privacy_meter.utils.attack_data.attack_data(
        dataset_path="dataset_purchase.txt", member_dataset_path="members.txt.npy", batch_size=32,
        attack_percentage=50, input_shape=(40,))
    attackobj = ml_privacy_meter.attack.meminf.initialize(
        target_train_model=cmodelA, target_attack_model=cmodelA, train_datahandler=datahandlerA,
        attack_datahandler=datahandlerA, layers_to_exploit=[5], gradients_to_exploit=[3, 4, 5], device=None,
        epochs=2, model_name="meminf_fcn", min_steps=20)
    attackobj.train_attack()
    result = attackobj.test_attack()
    assert ml_privacy_meter.attacks.meminf is ml_privacy_meter.attack.meminf
    print(result.auc)
"""


def test_a_2021_privacy_meter_script_runs_after_import_fedaudit_as_ml_privacy_meter(tmp_path):
    out = run_python(TUTORIAL_2021, cwd=tmp_path, timeout=600)
    auc = float(out.stdout.strip().splitlines()[-1])
    assert 0.0 <= auc <= 1.0
    assert (tmp_path / "logs" / "member_probs.npy").is_file() and (tmp_path / "logs" / "plots" / "roc.png").is_file()
