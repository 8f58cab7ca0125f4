"""Applications of the library: the paper's experiments, their report, the claim study, the demo.

* :mod:`.config` (and :mod:`.config_keys`): run configs, every key, the two scales (``paper``, ``smoke``);
* :mod:`.data`: which splits a run uses, checked before any training;
* :mod:`.preflight`: everything a run needs, checked and reported at once before training;
* :mod:`.mixing`: an episode's training data, one dataset or a weighted mix;
* :mod:`.checkpoints`: episodes, per-epoch checkpoints, resuming, stopping and best weights;
* :mod:`.runner`: :func:`run_experiment`, the run folder (``stardist-hier train`` and ``replay``);
* :mod:`.training_summary`: a run's loss curves and one-page summary;
* :mod:`.paper_tables`: the rows of Tables II and III;
* :mod:`.report`: the tables and figures of run folders, notebook setup;
* :mod:`.flatten`: labels flattened to the coarsest common level (the claim study's variant (e));
* :mod:`.claim`: the study of the paper's claim (variants, settings); :mod:`.claim_train` trains
  a variant to convergence, :mod:`.claim_study` runs and resumes it, :mod:`.claim_report`
  summarises it (paired intervals, the answer, learning curves);
* :mod:`.demo`: the project's main job in miniature.

These modules import the core (:mod:`stardist_hier.hierarchy`, :mod:`~stardist_hier.patches`,
:mod:`~stardist_hier.metrics`, :mod:`~stardist_hier.model`, ...); the core never imports them.
"""
