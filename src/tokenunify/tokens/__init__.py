"""Token stage: cut 3D crops into patch tokens and sample (visible, target) masks."""
