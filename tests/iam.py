"""The template's DynamoDB permissions, evaluated as IAM would for the registry table.

moto does not enforce IAM (docs/local-stack.md), so the unit tests do: :func:`allowed`
answers whether a function's policy in ``template.yaml`` lets it call a DynamoDB action on
items of a partition, and :func:`enforce` makes a boto3 DynamoDB client refuse, with
``AccessDeniedException`` as AWS would, every call the policy of the function acting at
the moment does not allow. Only what the template uses is understood (Allow and Deny
statements on the table or its ``watched-runs`` index, ``dynamodb:LeadingKeys`` under
``ForAllValues:StringLike`` or ``ForAllValues:StringEquals``, the SAM DynamoDB policy
templates); anything else fails the test rather than being guessed at. On an index,
``dynamodb:LeadingKeys`` is the index's partition key, as IAM evaluates it for a Query.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from botocore.model import OperationModel

from citymodels.registry import TABLE_KEY_SCHEMA, WATCHED_INDEX, WATCHED_INDEX_KEY_SCHEMA
from citymodels_devkit.local.template import load_yaml

TEMPLATE = load_yaml(Path(__file__).resolve().parents[1] / "template.yaml")
TABLE_ARN = {"Fn::GetAtt": ["RegistryTable", "Arn"]}
INDEX_ARNS = {WATCHED_INDEX: {"Fn::Sub": f"${{RegistryTable.Arn}}/index/{WATCHED_INDEX}"}}
"""The table's indexes, as the template names them in a statement's Resource."""
HASH_KEYS = {
    None: TABLE_KEY_SCHEMA[0]["AttributeName"],
    WATCHED_INDEX: WATCHED_INDEX_KEY_SCHEMA[0]["AttributeName"],
}

WRITE_ACTIONS = (
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "BatchWriteItem",
    "PartiQLInsert",
    "PartiQLUpdate",
    "PartiQLDelete",
)
"""The DynamoDB actions that change items."""

# SAM policy templates on the table: the actions each grants, on every item.
SAM_TEMPLATES = {
    "DynamoDBCrudPolicy": ("*",),
    "DynamoDBWritePolicy": WRITE_ACTIONS,
    "DynamoDBReadPolicy": ("GetItem", "BatchGetItem", "Query", "Scan", "DescribeTable"),
}


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def statements(logical_id: str, index: str | None = None) -> list[dict[str, Any]]:
    """The function's statements on the registry table, or on one of its indexes (SAM
    templates expanded: they grant the table and its indexes alike)."""
    resource = TABLE_ARN if index is None else INDEX_ARNS[index]
    found = []
    for policy in TEMPLATE["Resources"][logical_id]["Properties"].get("Policies", []):
        if not isinstance(policy, dict):
            continue
        for name, actions in SAM_TEMPLATES.items():
            if name in policy:
                found.append({"Effect": "Allow", "Action": [f"dynamodb:{a}" for a in actions]})
        for statement in policy.get("Statement", []):
            if resource in _listed(statement["Resource"]):
                found.append(statement)
    return found


def _leading_keys_match(statement: dict[str, Any], keys: list[str]) -> bool:
    condition = statement.get("Condition")
    if not condition:
        return True
    operators = {"ForAllValues:StringLike": fnmatchcase, "ForAllValues:StringEquals": str.__eq__}
    for operator, tests in condition.items():
        assert operator in operators and set(tests) == {"dynamodb:LeadingKeys"}, condition
        patterns = _listed(tests["dynamodb:LeadingKeys"])
        match = operators[operator]
        # ForAllValues: every key the request names matches one pattern.
        if not all(any(match(key, p) for p in patterns) for key in keys):
            return False
    return True


def allowed(logical_id: str, action: str, keys: list[str], index: str | None = None) -> bool:
    """Whether the function may call ``dynamodb:{action}`` on items of these partitions
    (of the table, or of ``index``)."""
    verdict = False
    for statement in statements(logical_id, index):
        if not any(fnmatchcase(f"dynamodb:{action}", a) for a in _listed(statement["Action"])):
            continue
        if not _leading_keys_match(statement, keys):
            continue
        if statement["Effect"] == "Deny":
            return False
        verdict = True
    return verdict


def _pk(item: dict[str, Any]) -> str:
    return str(item["pk"]["S"])


def requested(operation: str, params: dict[str, Any]) -> list[tuple[str, list[str], str | None]]:
    """The (action, partition keys, index or None) IAM authorizes for one DynamoDB call."""
    if operation in ("GetItem", "UpdateItem", "DeleteItem"):
        return [(operation, [_pk(params["Key"])], None)]
    if operation == "PutItem":
        return [(operation, [_pk(params["Item"])], None)]
    if operation == "Query":
        index = params.get("IndexName")
        assert index in HASH_KEYS, f"a Query of an index the template does not grant: {index}"
        key = re.escape(HASH_KEYS[index])
        match = re.search(rf"\b{key}\s*=\s*(:\w+)", params["KeyConditionExpression"])
        assert match, params["KeyConditionExpression"]
        value = str(params["ExpressionAttributeValues"][match.group(1)]["S"])
        return [(operation, [value], index)]
    if operation in ("TransactWriteItems", "TransactGetItems"):
        actions = {
            "Put": ("PutItem", "Item"),
            "Update": ("UpdateItem", "Key"),
            "Delete": ("DeleteItem", "Key"),
            "ConditionCheck": ("ConditionCheckItem", "Key"),
            "Get": ("GetItem", "Key"),
        }
        pairs: list[tuple[str, list[str], str | None]] = []
        for entry in params["TransactItems"]:
            ((kind, body),) = entry.items()
            action, field = actions[kind]
            pairs.append((action, [_pk(body[field])], None))
        return pairs
    # Batch calls, Scan and the rest: checked on the action alone (no leading key).
    return [(operation, [], params.get("IndexName"))]


@contextmanager
def enforce(client: Any) -> Iterator[list[str]]:
    """Make ``client`` (DynamoDB) answer as IAM would for the function acting.

    Yields a one-element list: put a function's logical id in it (``acting[0] = "X"``) to
    check the calls that follow against its policy; ``""`` checks nothing (the test's
    own set-up).
    """
    acting = [""]

    def check(params: dict[str, Any], model: OperationModel, **_: Any) -> None:
        if not acting[0]:
            return
        for action, keys, index in requested(model.name, params):
            if not allowed(acting[0], action, keys, index):
                raise ClientError(
                    {
                        "Error": {
                            "Code": "AccessDeniedException",
                            "Message": f"{acting[0]} is not authorized to perform "
                            f"dynamodb:{action} on partition(s) {keys} of {index or 'the table'}",
                        }
                    },
                    model.name,
                )

    client.meta.events.register("provide-client-params.dynamodb", check)
    try:
        yield acting
    finally:
        client.meta.events.unregister("provide-client-params.dynamodb", check)
