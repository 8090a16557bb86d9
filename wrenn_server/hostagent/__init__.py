"""The host agent: runs capsules on one machine and serves the control plane over gRPC."""
