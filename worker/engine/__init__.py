"""The engine: a synchronous facade (`add`, `abort`, `step`, `stats`, `generate`) over the
scheduler, the memory plan and the plan executor, with the normal and overlap loops."""

from qnext.worker.engine.engine import Engine, GenerationOutput, RequestOutput

__all__ = ["Engine", "GenerationOutput", "RequestOutput"]
