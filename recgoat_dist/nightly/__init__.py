"""Nightly retraining: date-keyed deltas, stable-id dataset versions, warm start from the champion,
a gate on a seeded holdout, atomic promotion through one pointer object, and rollback.

See docs/nightly.md. Entry points: :func:`recgoat_dist.nightly.night.run_night`,
:func:`recgoat_dist.nightly.night.init_registry`, and the ``recgoat nightly`` / ``recgoat registry``
commands (:mod:`recgoat_dist.nightly.cli`).
"""
