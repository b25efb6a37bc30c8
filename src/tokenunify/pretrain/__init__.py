"""Self-supervised pretraining: objectives, schedules and the loop."""
