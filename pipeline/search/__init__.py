"""Hyper-parameter search: ``python -m pipeline search`` and what a trial's training reports.

``space`` the dimensions from params.yaml (and their check), ``study`` Optuna's storage and study,
``trial`` the training side of a trial (reports each epoch's score, learns whether it is pruned),
``runner`` the trials as DVC experiments, ``guard`` the process group a trial runs in, ``report`` the
results. Optuna is the engine: samplers, pruners and RDB/journal storage are its own.
"""
