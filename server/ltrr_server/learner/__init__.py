"""The learner: consumes joined events, publishes model versions, writes snapshots."""
