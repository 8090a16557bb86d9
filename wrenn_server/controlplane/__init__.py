"""The Wrenn control plane: REST API, auth, scheduling, database and the RPC client to host agents."""
