"""Per-rank torch side: model building and weight loading, KV and state pools, input tensors,
model runner."""
