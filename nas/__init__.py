"""The composition root: the ``nas`` command, and the wiring of the controller to the worker
and parameter-server code (evaluators that train children, the cluster a service runs on, the
deploy tooling). The only package that imports more than one service."""
