"""DynamoDB transactions whose cost does not grow with the table (moto fills the rest).

moto's ``TransactWriteItems`` backs up every table a transaction touches with
``copy.deepcopy`` before applying it, to restore them if one of its conditions fails.
That makes each transaction cost time and memory in proportion to the whole table: the
registry's transactions (a run and its city, a job and its run, a publish) took 20 ms
at 100 cities and over 60 ms at 300, and the deep copies' garbage grew the stack past
5 GB while 2,000 cities were written. DynamoDB itself costs the same at any size.

:func:`install` replaces that one method of moto's backend with the same semantics
(all or nothing; conditions checked against the items as the transaction found them,
with ``ConditionalCheckFailed`` and the other cancellation reasons in order; one
operation per item; at most 100), backing up only the items the transaction writes.
moto's indexes are computed from the items when queried, so restoring the items
restores them too. The local stack serialises DynamoDB requests (``aws.py``), so no
other request sees a transaction half-applied.
"""

from __future__ import annotations

import copy
import json
from typing import Any

_INSTALLED = False


def transact_write_items(backend: Any, transact_items: list[dict[str, Any]]) -> None:
    """moto's ``DynamoDBBackend.transact_write_items``, with item-level backups."""
    from moto.dynamodb.comparisons import get_filter_expression
    from moto.dynamodb.exceptions import (
        ConditionalCheckFailed,
        MockValidationException,
        MultipleTransactionsException,
        TooManyTransactionsException,
        TransactionCanceledException,
        TransactWriteSingleOpException,
    )

    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    backups: dict[tuple[str, str], tuple[dict[str, Any], Any]] = {}
    errors: list[tuple[str | None, str | None, dict[str, Any] | None]] = []

    def rollback() -> None:
        for (table_name, _), (key, before) in backups.items():
            if before is None:
                backend.delete_item(table_name, key)
            else:
                backend.put_item(table_name, before.to_json()["Attributes"])

    for item in transact_items:
        if len(item) > 1:
            raise TransactWriteSingleOpException
        original: dict[str, Any] | None = None
        try:
            op_type, op = next(iter(item.items()))
            if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
                raise ValueError("Unsupported transaction operation")
            table_name = op["TableName"]
            names = op.get("ExpressionAttributeNames")
            values = op.get("ExpressionAttributeValues")
            condition = op.get("ConditionExpression")
            if op_type == "Put":
                table = backend.get_table(table_name)
                key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = op["Item"][table.range_key_attr]
            else:
                key = op["Key"]
            identity = (str(table_name), json.dumps(key, sort_keys=True))
            if identity in backups:
                raise MultipleTransactionsException()
            current = backend.get_item(table_name, key)
            backups[identity] = (key, copy.deepcopy(current))
            if condition is not None and not get_filter_expression(condition, names, values).expr(
                current
            ):
                if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
                    original = current.to_json()["Attributes"]
                raise ConditionalCheckFailed(item=original)
            if op_type == "Put":
                backend.put_item(
                    table_name,
                    op["Item"],
                    condition_expression=condition,
                    expression_attribute_names=names,
                    expression_attribute_values=values,
                )
            elif op_type == "Delete":
                backend.delete_item(
                    table_name,
                    key,
                    condition_expression=condition,
                    expression_attribute_names=names,
                    expression_attribute_values=values,
                )
            elif op_type == "Update":
                backend.update_item(
                    table_name,
                    key,
                    update_expression=op["UpdateExpression"],
                    condition_expression=condition,
                    expression_attribute_names=names,
                    expression_attribute_values=values,
                )
            errors.append((None, None, None))
        except (MultipleTransactionsException, MockValidationException):
            rollback()
            raise
        except ConditionalCheckFailed as err:
            errors.append(("ConditionalCheckFailed", str(err.message), original))
        except Exception as err:  # reported as the item's reason, as moto does
            errors.append((type(err).__name__, str(err), original))
    if any(code is not None for code, _, _ in errors):
        rollback()
        raise TransactionCanceledException(errors)


def install() -> None:
    """Use :func:`transact_write_items` for every moto DynamoDB backend (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from moto.dynamodb.models import DynamoDBBackend

    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign,assignment]
    _INSTALLED = True
