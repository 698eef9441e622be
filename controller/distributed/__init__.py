"""The distributed layout of a search: K controller replicas pushing to S parameter-server
shards, sharing a budget, a cache and a history through Redis."""
