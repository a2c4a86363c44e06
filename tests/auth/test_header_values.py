"""Credential headers (also bytes grpcio's client would refuse to send) and the principals file
are matched whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.rpc import error_details_pb2

from cofounder.agent.v1 import agent_control_service_pb2 as pb
from cofounder_server.auth.tokens import PrincipalsFileError, hash_token, load_credentials
from tests.auth.support import ALICE, BILLING
from tests.integration.test_whole_identifiers import RAW_CONTROLS, SUFFIXES
from tests.raw_grpc import RawResult, raw_unary

LIST_JOBS = "/cofounder.agent.v1.AgentControlService/ListJobs"
ON_BEHALF_OF_FIELD = "metadata.cofounder-on-behalf-of"


def details_of(result: RawResult) -> tuple[list[str], str]:
    """The BadRequest field paths and the ErrorInfo reason of a result."""
    fields: list[str] = []
    reason = ""
    for detail in result.status.details:
        bad = error_details_pb2.BadRequest()
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
        elif detail.Unpack(info):
            reason = info.reason
    return fields, reason


async def list_jobs(port: int, metadata: list[tuple[str, str]]) -> RawResult:
    return await raw_unary(port, LIST_JOBS, pb.ListJobsRequest().SerializeToString(), metadata)


async def test_the_raw_client_reaches_the_server_as_grpcio_would(auth_app) -> None:
    ok = await list_jobs(auth_app.port, list(BILLING.metadata("carol")))
    assert ok.code.name == "OK", ok


@pytest.mark.parametrize("suffix", SUFFIXES.values(), ids=SUFFIXES.keys())
async def test_an_on_behalf_of_id_with_anything_appended_is_invalid(auth_app, suffix) -> None:
    metadata = [*BILLING.metadata(), ("cofounder-on-behalf-of", "carol" + suffix)]

    result = await list_jobs(auth_app.port, metadata)

    assert result.code.name == "INVALID_ARGUMENT", result
    fields, _ = details_of(result)
    assert fields == [ON_BEHALF_OF_FIELD]
    assert not any(control in result.message for control in RAW_CONTROLS), repr(result.message)


@pytest.mark.parametrize(
    "suffix", [s for s in SUFFIXES.values() if s != " "], ids=[k for k in SUFFIXES if k != "trailing-space"]
)
async def test_a_bearer_token_with_a_control_character_appended_is_malformed(auth_app, suffix) -> None:
    result = await list_jobs(auth_app.port, [("authorization", f"Bearer {ALICE.token}{suffix}")])

    assert result.code.name == "UNAUTHENTICATED", result
    assert details_of(result)[1] == "AUTHORIZATION_MALFORMED"


async def test_spaces_around_a_bearer_token_are_optional_whitespace(auth_app) -> None:
    # HTTP's optional whitespace around a header value carries no meaning: not part of the token.
    result = await list_jobs(auth_app.port, [("authorization", f"Bearer  {ALICE.token} \t")])
    assert result.code.name == "OK", result


@pytest.mark.parametrize("suffix", SUFFIXES.values(), ids=SUFFIXES.keys())
def test_principals_file_values_with_anything_appended_are_refused(tmp_path: Path, suffix: str) -> None:
    digest = "a" * 64
    path = tmp_path / "principals.toml"
    for sha256, principal, complaint in (
        (digest + suffix, "alice", "sha256"),
        (digest, "alice" + suffix, "principal"),
    ):
        # JSON string escapes are TOML basic-string escapes: the file holds the real characters.
        path.write_text(
            f"[[tokens]]\nsha256 = {json.dumps(sha256)}\nprincipal = {json.dumps(principal)}\nrole = 'user'\n"
        )
        with pytest.raises(PrincipalsFileError, match=complaint):
            load_credentials(path)
    with pytest.raises(ValueError, match="may contain only"):
        hash_token(ALICE.token + suffix)
