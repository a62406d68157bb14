"""qnext_grpc: the gRPC front end (servicers, interceptors, pb <-> domain conversion, text
handling, worker bridge, client SDK). Never imports torch. Filled in by the gRPC issue."""
