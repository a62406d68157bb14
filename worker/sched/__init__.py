"""Scheduler and cache bookkeeping in pure Python (no torch import): requests, admission,
page and state-slot allocators, radix prefix cache. Filled in by the engine issue."""
