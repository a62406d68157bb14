"""Generated protobuf / gRPC stubs of proto/qnext/v1 (`python scripts/gen_protos.py`; do not
edit by hand — tests/unit/test_protos.py fails when they drift from the .proto files).
Only the front end (`qnext_grpc`) and clients import them; the engine never does."""
