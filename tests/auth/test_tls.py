"""TLS and mutual TLS on the real server, with certificates from a throw-away CA."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
import trustme

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder_client import Client, CofounderError, TLSConfig
from cofounder_server.app import Application
from tests.auth.support import ALICE, CALLERS, SCRIPTED, write_principals
from tests.support import RPC_TIMEOUT

SERVER_NAME = "cofounder.test"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def pem_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The server certificate and key, and the CA as the client CA bundle."""
    directory = tmp_path_factory.mktemp("tls")
    server = ca.issue_cert(SERVER_NAME, "127.0.0.1")
    files = {"cert": directory / "server.pem", "key": directory / "server.key", "ca": directory / "ca.pem"}
    server.cert_chain_pems[0].write_to_path(str(files["cert"]))
    server.private_key_pem.write_to_path(str(files["key"]))
    ca.cert_pem.write_to_path(str(files["ca"]))
    return files


@pytest.fixture
async def start_app(
    settings_for, database_url: str, tmp_path: Path
) -> AsyncIterator[Callable[..., Application]]:
    apps: list[Application] = []

    async def start(**overrides: object) -> Application:
        principals = write_principals(
            tmp_path / "principals.toml",
            CALLERS,
            certificates=[("reporting.internal", "reporting", "service")],
        )
        app = await Application.start(
            settings_for(database_url, auth_tokens_file=str(principals), **overrides)
        )
        apps.append(app)
        return app

    yield start  # type: ignore[misc]
    for app in apps:
        await app.stop(grace_seconds=1.0)


def client_tls(ca: trustme.CA, client_cert: trustme.LeafCert | None = None) -> TLSConfig:
    return TLSConfig(
        root_certificates=ca.cert_pem.bytes(),
        certificate_chain=client_cert.cert_chain_pems[0].bytes() if client_cert else None,
        private_key=client_cert.private_key_pem.bytes() if client_cert else None,
    )


async def test_tls_serves_verified_clients_with_tokens(start_app, pem_files, ca) -> None:
    app = await start_app(tls_cert_file=str(pem_files["cert"]), tls_key_file=str(pem_files["key"]))
    target = f"127.0.0.1:{app.port}"

    async with Client(target, tls=client_tls(ca), token=ALICE.token, timeout=RPC_TIMEOUT) as client:
        job = await client.submit_job(
            project_id="tls", goal="over TLS", daily_budget_microdollars=1, agent=SCRIPTED
        )
    assert job.owner_id == "alice"

    async with Client(target, tls=client_tls(ca), timeout=RPC_TIMEOUT, retries=0) as client:
        with pytest.raises(CofounderError) as caught:
            await client.list_jobs()
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED

    # A plaintext client cannot talk to the TLS port at all.
    async with Client(target, token=ALICE.token, timeout=RPC_TIMEOUT, retries=0) as client:
        with pytest.raises(CofounderError) as caught:
            await client.list_jobs()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_maps_the_client_certificate_to_a_principal(start_app, pem_files, ca) -> None:
    app = await start_app(
        tls_cert_file=str(pem_files["cert"]),
        tls_key_file=str(pem_files["key"]),
        tls_client_ca_file=str(pem_files["ca"]),
    )
    target = f"127.0.0.1:{app.port}"
    reporting = ca.issue_cert("reporting.internal", common_name="reporting.internal")

    # The certificate names a service, so it acts for the user it names.
    async with Client(
        target, tls=client_tls(ca, reporting), on_behalf_of="erin", timeout=RPC_TIMEOUT
    ) as client:
        job = await client.submit_job(
            project_id="mtls", goal="by certificate", daily_budget_microdollars=1, agent=SCRIPTED
        )
    assert job.owner_id == "erin"

    # A bearer token, when sent, decides who the caller is.
    async with Client(
        target, tls=client_tls(ca, reporting), token=ALICE.token, timeout=RPC_TIMEOUT
    ) as client:
        assert [j.job_id for j in (await client.list_jobs(project_id="mtls")).jobs] == []

    stranger = ca.issue_cert("stranger.internal", common_name="stranger.internal")
    async with Client(target, tls=client_tls(ca, stranger), timeout=RPC_TIMEOUT, retries=0) as client:
        with pytest.raises(CofounderError) as caught:
            await client.list_jobs()
    assert (caught.value.code, caught.value.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "CREDENTIALS_UNKNOWN",
    )

    # Without a certificate from the client CA there is no connection.
    for tls in (client_tls(ca), client_tls(ca, trustme.CA().issue_cert("reporting.internal"))):
        async with Client(target, tls=tls, token=ALICE.token, timeout=RPC_TIMEOUT, retries=0) as client:
            with pytest.raises(CofounderError) as caught:
                await client.list_jobs()
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE


async def test_without_mutual_tls_certificate_names_are_not_trusted(start_app, pem_files, ca) -> None:
    app = await start_app(tls_cert_file=str(pem_files["cert"]), tls_key_file=str(pem_files["key"]))
    reporting = ca.issue_cert("reporting.internal", common_name="reporting.internal")
    credentials = client_tls(ca, reporting).channel_credentials()
    async with grpc.aio.secure_channel(f"127.0.0.1:{app.port}", credentials) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary("/cofounder.agent.v1.AgentControlService/ListJobs")(
                pb.ListJobsRequest().SerializeToString(),
                metadata=(("cofounder-on-behalf-of", "erin"),),
                timeout=RPC_TIMEOUT,
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"tls_cert_file": "CERT"}, "must be given together"),
        ({"tls_cert_file": "CERT", "tls_key_file": "CA"}, "cannot use TLS certificate"),
        ({"tls_cert_file": "CERT", "tls_key_file": "KEY", "tls_client_ca_file": "KEY"}, "client CA"),
        ({"tls_client_ca_file": "CA"}, "needs --tls-cert-file"),
    ],
    ids=["cert-without-key", "key-not-matching", "bad-client-ca", "client-ca-without-tls"],
)
async def test_tls_mistakes_refuse_to_start(settings_for, pem_files, tmp_path, overrides, complaint) -> None:
    files = {"CERT": pem_files["cert"], "KEY": pem_files["key"], "CA": pem_files["ca"]}
    principals = write_principals(tmp_path / "principals.toml", CALLERS)
    settings = settings_for(
        auth_tokens_file=str(principals), **{name: str(files[value]) for name, value in overrides.items()}
    )
    with pytest.raises(SystemExit, match=complaint):
        await Application.start(settings)
