"""Deploying the cluster: one topology rendered as docker-compose.yml or run as local
processes (``nas up`` / ``nas down``)."""
