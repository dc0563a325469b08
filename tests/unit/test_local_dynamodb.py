"""The local stack's DynamoDB transactions: moto's semantics, without copying the table."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import Item
from moto.dynamodb.models.table import Table

from citymodels_devkit.local import dynamodb

TABLE = "t"


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(DynamoDBBackend, "transact_write_items", dynamodb.transact_write_items)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName=TABLE,
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        yield client


def key(pk: str, sk: str = "x") -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def update(pk: str, value: str, condition: str | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "TableName": TABLE,
        "Key": key(pk),
        "UpdateExpression": "SET v = :v",
        "ExpressionAttributeValues": {":v": {"S": value}},
    }
    if condition:
        op["ConditionExpression"] = condition
    return {"Update": op}


def value(client: Any, pk: str) -> str | None:
    item = client.get_item(TableName=TABLE, Key=key(pk)).get("Item")
    return item["v"]["S"] if item and "v" in item else None


def test_all_or_nothing_with_the_reasons_in_order(client: Any) -> None:
    client.put_item(TableName=TABLE, Item={**key("a"), "v": {"S": "old"}})
    # GIVEN a transaction whose last condition fails
    with pytest.raises(client.exceptions.TransactionCanceledException) as failed:
        client.transact_write_items(
            TransactItems=[
                update("a", "new"),
                update("b", "created"),
                {"Delete": {"TableName": TABLE, "Key": key("a", "y")}},
                update("c", "never", condition="attribute_exists(pk)"),
            ]
        )
    # THEN nothing of it was made: the updated item is back, the created one gone
    assert (value(client, "a"), value(client, "b"), value(client, "c")) == ("old", None, None)
    reasons = [r["Code"] for r in failed.value.response["CancellationReasons"]]
    assert reasons == ["None", "None", "None", "ConditionalCheckFailed"]
    # AND a transaction whose conditions hold is made whole
    client.transact_write_items(
        TransactItems=[update("a", "new", "attribute_exists(pk)"), update("b", "made")]
    )
    assert (value(client, "a"), value(client, "b")) == ("new", "made")


def test_two_operations_on_one_item_are_refused(client: Any) -> None:
    with pytest.raises(client.exceptions.ClientError, match="multiple operations"):
        client.transact_write_items(TransactItems=[update("a", "1"), update("a", "2")])
    assert value(client, "a") is None


def test_a_transaction_copies_the_items_it_writes_not_the_table(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(200):
        client.put_item(TableName=TABLE, Item={**key(f"k{i}"), "v": {"S": "x"}})
    copied: list[object] = []
    original = dynamodb.copy.deepcopy

    def counting(thing: object, *args: Any) -> Any:
        copied.append(thing)
        return original(thing, *args)

    monkeypatch.setattr(dynamodb.copy, "deepcopy", counting)
    client.transact_write_items(TransactItems=[update("k1", "y"), update("new", "z")])
    # items are copied (the one that existed, and moto's own copy in its UpdateItem),
    # never a table: the cost does not grow with the table's 200 other items
    assert not any(isinstance(thing, Table) for thing in copied)
    assert sum(isinstance(thing, Item) for thing in copied) <= 2


def test_a_query_reads_its_partition_only_and_answers_as_moto_does(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for pk in ("CITIES", "CITY#a", "CITY#b"):
        for sk in ("c", "a", "b", "a-", "a0"):
            client.put_item(TableName=TABLE, Item={**key(pk, sk), "v": {"S": pk + sk}})

    def ask() -> list[list[str]]:
        answers = []
        for condition, values, forward in [
            ("pk = :p", {":p": {"S": "CITIES"}}, True),
            ("pk = :p AND sk BETWEEN :l AND :h", {":p": {"S": "CITY#a"}, ":l": {"S": "a-"},
             ":h": {"S": "b"}}, False),
            ("pk = :p AND begins_with(sk, :s)", {":p": {"S": "CITY#b"}, ":s": {"S": "a"}}, True),
        ]:  # fmt: skip
            answer = client.query(
                TableName=TABLE,
                KeyConditionExpression=condition,
                ExpressionAttributeValues=values,
                ScanIndexForward=forward,
                Limit=3,
            )
            # the items, in order; and whether it says more may follow where more match
            # (moto also says so when the page is full and only other items follow)
            more_match = condition.endswith(":p")
            answers.append(
                [i["v"]["S"] for i in answer["Items"]]
                + ([str(answer.get("LastEvaluatedKey"))] if more_match else [])
            )
        return answers

    as_moto = ask()
    read: list[int] = []
    all_items = Table.all_items
    monkeypatch.setattr(Table, "query", dynamodb.partition_query(Table.query))
    monkeypatch.setattr(
        Table,
        "all_items",
        dynamodb.partition_items(lambda self: read.append(1) or all_items(self)),
    )
    assert ask() == as_moto
    assert read == []  # the whole table was never listed
