"""ML Privacy Meter's ``meminf`` module: a 2021 script runs with its import changed to fedaudit's.

    from fedaudit.attacks import meminf
    from fedaudit.data import attack_data
    datahandler = attack_data(dataset_path=..., member_dataset_path=..., batch_size=64,
                              attack_percentage=50, input_shape=(600,))
    attack = meminf.initialize(target_train_model=model, target_attack_model=model,
                               train_datahandler=datahandler, attack_datahandler=datahandler,
                               layers_to_exploit=[5], gradients_to_exploit=[3, 4, 5], learning_rate=1e-4)
    attack.train_attack()
    result = attack.test_attack()

``initialize`` (and ``meminf``, the name of one older release) is :class:`fedaudit.attacks.nasr.WhiteBoxAttack`.
"""

from fedaudit.attacks.nasr import AttackResult, WhiteBoxAttack

initialize = WhiteBoxAttack
meminf = WhiteBoxAttack

__all__ = ["initialize", "meminf", "AttackResult"]
