"""Training a study arm's lanes: many models at once, on one of two paths.

    fit.fit_arm(arm, labels, workdir, plan, ...)          the one entry point; picks the path, returns FitResult
      |
      |-- full model (any arm)                            |-- cached features (trunk frozen, fixed statistics)
      |   full_model.py   progress, checkpoints, resume   |   cached_heads.py   features once, heads per lane
      |   engine_setup.py recipe, states, placed lanes,   |   head_training.py  feature extraction, head steps
      |                   strategy choice                 |   lsr_probe.py      closed-form probes ('<arm>_lsr')
      |   autotune.py     times strategies on this device |
      |   engine.py       all lanes as one program        |
      |   trainer.py      one model's train step          |
      |
    shared: interface.py (ArmSetup in, FitResult out), lanes.py (what each lane is: seed, fold, size, keys),
            augment.py (on-device augmentation), optim.py (optimisers, schedules, frozen groups),
            inference.py (batched prediction, a lane's predictor), mesh.py (devices), checkpoints.py (orbax),
            divergence.py (which lanes diverged, and why)

Open engine.py to change how lanes run together, trainer.py for the loss and step, head_training.py for the
cached-feature heads, and fit.py for which path an arm takes.
"""
