"""What both gRPC servers of the project share: request ids, RPC logs and metrics."""
