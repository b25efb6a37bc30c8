"""Fine-tuning an affinity network: training loop task, checkpoint init and affinity targets."""
