"""Search jobs: the job store (an append-only journal per job) and its backends."""
