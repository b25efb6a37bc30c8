"""The one training core: settings base, optimiser groups, devices, DDP, and the loop that pretraining and fine-tuning share."""
