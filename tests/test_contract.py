"""Each job kind's facts are complete, and what is derived from them agrees with them:
the OpenAPI document, the host wrappers, the actors, the CLI and the label sets."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from conftest import ROOT
from paglets_artifacts import ArtifactJobs
from paglets_artifacts.errors import InvalidInput
from paglets_artifacts.http.openapi import openapi_document
from paglets_artifacts.jobs import contract
from paglets_artifacts.jobs.records import STATES, JobRecord
from paglets_artifacts.refs import ArtifactRef

KINDS = sorted(contract.KINDS.values(), key=lambda kind: kind.name)
#: The ``ArtifactJobs`` method of each kind (its name, unless a keyword is in the way).
WRAPPERS = {kind.name: kind.name for kind in KINDS} | {"import": "import_file"}
#: JSON schema types of each argument type's values.
JSON_TYPES = {"string", "number", "integer", "boolean", "null"}


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.name)
def test_every_kind_and_argument_has_its_facts(kind):
    assert kind.doc and "\n" not in kind.doc
    assert kind.queue_name in (contract.TRANSFER_QUEUE, contract.MAINTENANCE_QUEUE)
    assert kind.actor_name == f"paglets_artifacts_{kind.name}"
    assert kind.direction in (None, contract.INTO_STORE, contract.OUT_OF_STORE)
    assert not (kind.direction or kind.artifact_is_job_id) or kind.transfer
    for name, argument in kind.arguments.items():
        assert argument.doc and "\n" not in argument.doc, name
        types = argument.type.schema["type"]
        assert set([types] if isinstance(types, str) else types) <= JSON_TYPES, name
        assert not (argument.required and argument.default is not None), name
        if argument.default is not None:
            assert argument.check(name, argument.default) == argument.default, name  # a default is a valid value


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.name)
def test_the_openapi_argument_schemas_are_the_facts(kind):
    schema = openapi_document()["components"]["schemas"][f"{kind.name}_arguments"]
    assert schema["additionalProperties"] is False
    assert schema["required"] == [name for name, argument in kind.arguments.items() if argument.required]
    assert list(schema["properties"]) == list(kind.arguments)
    for name, argument in kind.arguments.items():
        expected = {**argument.type.schema, "description": argument.doc}
        if argument.default is not None:
            expected["default"] = argument.default
        assert schema["properties"][name] == expected
    post = openapi_document()["paths"][f"/jobs/{kind.name}"]["post"]
    assert kind.doc in post["summary"]


def test_the_openapi_ref_and_record_schemas_are_their_wire_forms():
    schemas = openapi_document()["components"]["schemas"]
    ref = schemas["ArtifactRef"]["properties"]
    assert list(ref) == list(ArtifactRef("h", "ab").to_wire())
    assert ref["size_bytes"] == {"type": "integer"} and ref["expires_at"] == {"type": "number"}
    record = schemas["JobRecord"]["properties"]
    assert list(record) == list(JobRecord("j", "import").to_wire())
    assert record["state"]["enum"] == list(STATES)
    assert record["started_at"] == {"type": ["number", "null"]} and record["result"] == {}
    assert record["error"] == {"type": ["object", "null"]}


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.name)
def test_each_host_wrapper_takes_its_kinds_arguments_with_their_defaults(kind):
    parameters = list(inspect.signature(getattr(ArtifactJobs, WRAPPERS[kind.name])).parameters.values())[1:]
    # Every enqueue takes a client's idempotency key and a completion callback URL, last.
    callback = parameters.pop()
    assert (callback.name, callback.kind, callback.default) == ("callback_url", callback.KEYWORD_ONLY, None)
    key = parameters.pop()
    assert (key.name, key.kind, key.default) == ("idempotency_key", key.KEYWORD_ONLY, None)
    assert [parameter.name for parameter in parameters] == list(kind.arguments)
    for parameter in parameters:
        argument = kind.arguments[parameter.name]
        if argument.required:
            assert parameter.kind is parameter.POSITIONAL_OR_KEYWORD and parameter.default is parameter.empty
        else:
            assert parameter.kind is parameter.KEYWORD_ONLY and parameter.default == argument.default


def _actors() -> dict[str, list[str]]:
    """Each actor's kind (``job_actor(contract.X, ...)``) and its keyword-only parameters,
    read from the source: importing the worker modules would build a broker."""
    found = {}
    for path in (ROOT / "workers" / "actors.py", ROOT / "workers" / "remote_actors.py"):
        for node in ast.parse(Path(path).read_text()).body:
            if not isinstance(node, ast.FunctionDef):
                continue
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", "") == "job_actor":
                    found[decorator.args[0].attr] = [arg.arg for arg in node.args.kwonlyargs]
    return found


def test_every_kind_has_one_actor_taking_exactly_its_arguments():
    actors = _actors()
    by_constant = {name: value for name, value in vars(contract).items() if isinstance(value, contract.JobKind)}
    assert {by_constant[name].name for name in actors} == set(contract.KINDS)
    for name, parameters in actors.items():
        assert parameters == list(by_constant[name].arguments), name


def test_label_sets_come_from_the_facts():
    from workers import logs, metrics

    assert metrics.IMPORT_KINDS == {"import", "import_url"}
    assert metrics.EXPORT_KINDS == {"export", "export_to_host"}
    assert logs.ARTIFACT_FROM_JOB_ID_KINDS == {"import", "import_url"}
    assert contract.TRANSFER_KINDS == {kind.name for kind in KINDS if kind.queue_name == contract.TRANSFER_QUEUE}


def test_cli_job_options_are_documented_by_the_arguments():
    from typer.main import get_command

    from paglets_artifacts.cli.commands import app

    commands = get_command(app).commands
    for command, kind, options in (
        (
            "import",
            contract.IMPORT,
            {
                "path": "path",
                "owner": "owner_agent_id",
                "name": "name",
                "delete_source": "delete_source",
                "sha256": "expected_sha256",
            },
        ),
        ("export", contract.EXPORT, {"artifact_id": "artifact_id", "target": "target", "move": "move"}),
        ("import-url", contract.IMPORT_URL, {"url": "url", "name": "name", "size": "expected_size"}),
        ("push", contract.EXPORT_TO_HOST, {"host_url": "host_url", "owner": "owner_agent_id", "move": "move"}),
        ("sweep", contract.SWEEP, {"now": "now"}),
        ("delete-owner", contract.DELETE_OWNER, {"owner": "owner_agent_id"}),
    ):
        params = {param.name: param for param in commands[command].params}
        assert commands[command].help.startswith(kind.doc), command
        for param, argument in options.items():
            assert params[param].help == kind.arguments[argument].doc, (command, param)


def test_a_url_argument_is_redacted_by_its_type_and_errors_name_the_argument():
    shown = contract.IMPORT_URL.shown({"url": "http://peer/x?token=s3cret", "name": "token=kept"})
    assert shown == {"url": "http://peer/x?token=***", "name": "token=kept"}
    with pytest.raises(InvalidInput, match="argument 'target' must be an absolute path"):
        contract.EXPORT.validate({"artifact_id": "ab", "target": "relative"})


@pytest.mark.parametrize(
    ("kind", "method", "own"),
    [
        (contract.IMPORT_URL, "pull", set()),
        (contract.EXPORT_TO_HOST, "push", {"move"}),  # the actor deletes after the push
        (contract.DOWNLOAD, "download", {"move"}),  # the actor deletes the remote after the download
    ],
    ids=lambda value: getattr(value, "name", None) or str(value),
)
def test_the_remote_client_takes_the_arguments_of_the_kinds_it_runs_with_their_defaults(kind, method, own):
    from paglets_artifacts.http.remote import RemoteTransfers

    parameters = inspect.signature(getattr(RemoteTransfers, method)).parameters
    for name, argument in kind.arguments.items():
        if name in own:
            continue
        assert name in parameters, (method, name)
        if not argument.required:
            assert parameters[name].default == argument.default, (method, name)


def test_the_readmes_job_tables_give_each_kinds_queue_and_arguments():
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].strip("`") in contract.KINDS and cells[1].startswith("`artifact-"):
            names = [token for token in cells[2].split("`")[1::2] if token.isidentifier()]
            rows[cells[0].strip("`")] = (cells[1].strip("`"), names)
    assert rows == {kind.name: (kind.queue_name, list(kind.arguments)) for kind in KINDS}
