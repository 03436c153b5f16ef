"""What the client library, the CLI and the server share: light, pure-Python modules (no torch, protobuf or grpc)."""
