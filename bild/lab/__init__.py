"""The experiment tooling around the decoding core: the CLI, option models and YAML configs,
prompt sets and metrics, the measuring layer, bench, tune, cost calibration, alignment, W&B
logging, traces and the learned policy's training, and the offline local pair.

It may import the core (`bild`), the built-in policies and optuna/wandb/matplotlib; the core
imports none of it (tests/test_layers.py checks every core module's imports).
"""
