"""Framework integrations: each module is imported by the user, and imports its framework.

``from runstream.integration.lightning import WandbLogger`` and its kin keep wandb's names, so
code written for wandb's integrations switches by its import line (docs/integrations.md).
"""
