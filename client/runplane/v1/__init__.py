"""Generated runplane.v1 protobuf and gRPC stubs (see `make proto`)."""
