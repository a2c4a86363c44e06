"""TLS and mutual TLS against a server with certificates made by a throw-away CA."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import trustme
from client_fakes import RPC_TIMEOUT, Harness, new_job, start_harness

from cofounder_client import AUTHORIZATION_HEADER, Client, CofounderError, TLSConfig

SERVER_NAME = "cofounder.test"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert(SERVER_NAME, "127.0.0.1")


def _server_credentials(
    server_cert: trustme.LeafCert, client_ca: trustme.CA | None = None
) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(server_cert.private_key_pem.bytes(), server_cert.cert_chain_pems[0].bytes())],
        root_certificates=client_ca.cert_pem.bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )


@pytest.fixture
async def tls_harness(server_cert: trustme.LeafCert) -> AsyncIterator[Harness]:
    running = await start_harness(_server_credentials(server_cert))
    yield running
    await running.server.stop(None)


@pytest.fixture
async def mtls_harness(ca: trustme.CA, server_cert: trustme.LeafCert) -> AsyncIterator[Harness]:
    running = await start_harness(_server_credentials(server_cert, client_ca=ca))
    yield running
    await running.server.stop(None)


async def test_tls_verifies_the_server_against_the_given_ca(ca: trustme.CA, tls_harness: Harness) -> None:
    job = tls_harness.jobs.add(new_job())
    tls = TLSConfig(root_certificates=ca.cert_pem.bytes())
    async with Client(tls_harness.target, tls=tls, token="t", timeout=RPC_TIMEOUT) as client:
        assert (await client.get_job(job.job_id)).job_id == job.job_id
    assert tls_harness.recorder.calls[0].metadata[AUTHORIZATION_HEADER] == "Bearer t"


async def test_server_name_override_checks_the_certificate_name(ca: trustme.CA, tls_harness: Harness) -> None:
    job = tls_harness.jobs.add(new_job())
    good = TLSConfig(root_certificates=ca.cert_pem.bytes(), server_name_override=SERVER_NAME)
    async with Client(tls_harness.target, tls=good, timeout=RPC_TIMEOUT) as client:
        await client.get_job(job.job_id)

    wrong = TLSConfig(root_certificates=ca.cert_pem.bytes(), server_name_override="other.test")
    async with Client(tls_harness.target, tls=wrong, timeout=RPC_TIMEOUT, retries=0) as client:
        with pytest.raises(CofounderError) as caught:
            await client.get_job(job.job_id)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


async def test_tls_rejects_a_server_signed_by_another_ca(tls_harness: Harness) -> None:
    stranger = TLSConfig(root_certificates=trustme.CA().cert_pem.bytes())
    async with Client(tls_harness.target, tls=stranger, timeout=RPC_TIMEOUT, retries=0) as client:
        with pytest.raises(CofounderError) as caught:
            await client.get_job("x")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert tls_harness.recorder.calls == []


async def test_mutual_tls_presents_the_client_certificate(
    ca: trustme.CA, mtls_harness: Harness, tmp_path: Path
) -> None:
    client_cert = ca.issue_cert("backend@example.test", common_name="backend")
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "client.pem", tmp_path / "client.key"
    ca.cert_pem.write_to_path(str(ca_file))
    client_cert.cert_chain_pems[0].write_to_path(str(cert_file))
    client_cert.private_key_pem.write_to_path(str(key_file))
    tls = TLSConfig.from_files(ca_file=ca_file, cert_file=cert_file, key_file=key_file)
    job = mtls_harness.jobs.add(new_job())
    async with Client(mtls_harness.target, tls=tls, timeout=RPC_TIMEOUT) as client:
        assert (await client.get_job(job.job_id)).job_id == job.job_id
    assert mtls_harness.recorder.calls[0].peer_common_names == ["backend"]


async def test_mutual_tls_server_refuses_a_client_without_certificate(
    ca: trustme.CA, mtls_harness: Harness
) -> None:
    tls = TLSConfig(root_certificates=ca.cert_pem.bytes())
    async with Client(mtls_harness.target, tls=tls, timeout=RPC_TIMEOUT, retries=0) as client:
        with pytest.raises(CofounderError) as caught:
            await client.get_job("x")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert mtls_harness.recorder.calls == []


def test_certificate_and_key_go_together() -> None:
    with pytest.raises(ValueError, match="together"):
        TLSConfig(certificate_chain=b"cert")
