"""Generated code of the Open Inference Protocol (KServe V2) protos, Triton's gRPC flavour (package ``inference``)."""
