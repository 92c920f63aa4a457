"""Pipelines that chain the pruning components between a trained model and the Pusher."""
