"""The daemon: config, keys, store, client API, metrics and the asyncio shell."""
