"""The experiments the ``jaxreg`` command runs: ``regimes`` (members and the one training
program), ``run`` (the main job) and ``sweep`` (one regularizer over a range of strengths)."""
