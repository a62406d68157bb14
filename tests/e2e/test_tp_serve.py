"""`qnext serve --tp 2`: the worker runs its TP ranks as processes (rank 0 drives) and serves
the tokens the offline `qnext generate --tp 2` produces; the runtime re-split reaches both
ranks; stopping the server stops every rank."""

from __future__ import annotations

import json
import subprocess
import sys

from qnext.v1 import admin_pb2, admin_pb2_grpc, generation_pb2 as g, generation_pb2_grpc
from tests.e2e.servers import Server


def test_serve_with_two_tp_ranks(tiny_checkpoint):
    path = tiny_checkpoint("tiny-tp")
    offline = subprocess.run([sys.executable, "-m", "qnext.cli.main", "generate", "--tp", "2",
                              "--model-path", str(path), "--prompt", "tensor parallel",
                              "--max-new-tokens", "12"], capture_output=True, text=True,
                             timeout=300)
    assert offline.returncode == 0, offline.stderr
    want = json.loads(offline.stdout)["token_ids"]
    server = Server(path, "--tp", "2")
    try:
        gen = generation_pb2_grpc.GenerationStub(server.data)
        request = g.GenerateRequest(text="tensor parallel", sampling=g.SamplingParams(
            temperature=0, max_new_tokens=12))
        assert list(gen.Generate(request, timeout=120).token_ids) == want
        admin = admin_pb2_grpc.AdminStub(server.control)
        info = admin.GetServerInfo(admin_pb2.GetServerInfoRequest(), metadata=server.auth)
        assert json.loads(info.config_json)["parallel"]["tp_size"] == 2
        resized = admin.ResizeMambaCache(admin_pb2.ResizeMambaCacheRequest(num_slots=24),
                                         metadata=server.auth, timeout=120)
        assert resized.applied and resized.memory.state_slots.total == 24
        assert list(gen.Generate(request, timeout=120).token_ids) == want
    finally:
        assert server.stop() == 0
