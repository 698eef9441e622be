"""The search service: validated job specs, the job runner, the gRPC servicer."""
