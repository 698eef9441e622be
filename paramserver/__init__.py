"""Parameter-server shards: an even range of the flattened policy vector per shard, Adam state,
versions, bounded staleness and idempotent pushes. Filled by the parameter-server issue."""
