"""qnext.worker: the worker daemon's code — config, scheduler (pure Python), engine, per-rank
runtime, models and TP-aware layers. Nothing here imports grpc or generated code."""
