"""TLS on both ports with a certificate authority made in the test: TLS clients generate and
administer (qnext-admin --tls-ca, qnext chat --tls-ca), plaintext clients are refused; with
--tls-client-ca a client needs a certificate that CA signed (mTLS)."""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
import pytest

from qnext.v1 import admin_pb2, admin_pb2_grpc, generation_pb2 as g, generation_pb2_grpc
from tests.e2e.certs import make_pki
from tests.e2e.servers import Server

REQUEST = g.GenerateRequest(text="hi", sampling=g.SamplingParams(temperature=0,
                                                                 max_new_tokens=3))


def test_tls_and_mtls(tiny_checkpoint, tmp_path):
    path, pki = tiny_checkpoint("tiny"), make_pki(tmp_path)
    tls = ("--tls-cert", str(pki["server"]), "--tls-key", str(pki["server_key"]))
    ca = pki["ca"].read_bytes()
    server = Server(path, *tls, creds=grpc.ssl_channel_credentials(ca))
    try:
        assert generation_pb2_grpc.GenerationStub(server.data).Generate(REQUEST, timeout=60)
        plain = generation_pb2_grpc.GenerationStub(grpc.insecure_channel(server.address))
        with pytest.raises(grpc.RpcError) as err:
            plain.Generate(REQUEST, timeout=10)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        env = {**os.environ, "QNEXT_ADMIN_TOKEN": server.token}
        admin = subprocess.run([sys.executable, "-m", "qnext.cli.admin", "--addr",
                                f"127.0.0.1:{server.admin_port}", "--tls-ca", str(pki["ca"]),
                                "stats"], capture_output=True, text=True, env=env, timeout=60)
        assert admin.returncode == 0, admin.stderr
        chat = subprocess.run([sys.executable, "-m", "qnext.cli.main", "chat", "--addr",
                               server.address, "--tls-ca", str(pki["ca"]), "--prompt", "hi",
                               "--max-new-tokens", "3"], capture_output=True, text=True,
                              timeout=60)
        assert chat.returncode == 0, chat.stderr
    finally:
        assert server.stop() == 0
    client = grpc.ssl_channel_credentials(ca, pki["client_key"].read_bytes(),
                                          pki["client"].read_bytes())
    server = Server(path, *tls, "--tls-client-ca", str(pki["ca"]), creds=client)
    try:
        admin = admin_pb2_grpc.AdminStub(server.control)
        assert admin.GetStats(admin_pb2.GetStatsRequest(), metadata=server.auth, timeout=10)
        anonymous = grpc.secure_channel(server.address, grpc.ssl_channel_credentials(ca))
        with pytest.raises(grpc.RpcError) as err:
            generation_pb2_grpc.GenerationStub(anonymous).Generate(REQUEST, timeout=10)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        assert server.stop() == 0


def test_tls_flags_are_checked(tmp_path):
    run = subprocess.run([sys.executable, "-m", "qnext.cli.main", "serve", "--tls-cert",
                          str(tmp_path / "missing.pem")], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2 and "--tls-key" in run.stderr
