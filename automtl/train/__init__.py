"""What a model is trained on and for: tasks (losses, metrics, heads), datasets, loss weightings."""
