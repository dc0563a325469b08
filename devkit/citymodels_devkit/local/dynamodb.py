"""DynamoDB transactions and queries whose cost does not grow with the table.

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

Likewise moto answers a ``Query`` of one partition by sorting every item of the table
and then picking the partition's: at 10,000 cities a city's runs took ~200 ms to read,
and ``citymodels status`` 10 s a page. :func:`install` makes a query of the table
itself (not of an index) read only its partition's items, in the same order.
"""

from __future__ import annotations

import copy
import json
import threading
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
            expression = {
                "condition_expression": condition,
                "expression_attribute_names": names,
                "expression_attribute_values": values,
            }
            if op_type == "Put":
                backend.put_item(table_name, op["Item"], **expression)
            elif op_type == "Delete":
                backend.delete_item(table_name, key, **expression)
            elif op_type == "Update":
                backend.update_item(
                    table_name, key, update_expression=op["UpdateExpression"], **expression
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


_STRING_TESTS: dict[str, Any] = {
    "EQ": lambda v, a: v == a[0],
    "LT": lambda v, a: v < a[0],
    "LE": lambda v, a: v <= a[0],
    "GT": lambda v, a: v > a[0],
    "GE": lambda v, a: v >= a[0],
    "BETWEEN": lambda v, a: a[0] <= v <= a[1],
    "BEGINS_WITH": lambda v, a: v.startswith(a[0]),
}
"""DynamoDB's sort-key conditions on strings. Python compares strings by code point,
which is the order of their UTF-8 bytes: DynamoDB's order."""


def partition_query(query: Any) -> Any:
    """Wrap moto's ``Table.query`` so that a query of the table (no index) on a table
    with a sort key considers only the items of its partition, and, for a string
    sort-key condition with a ``Limit`` (no filter, no start key), only the first
    ``Limit`` + 1 matching items in the query's order: what a page of 100 cities reads
    out of 10,000."""
    from moto.dynamodb.comparisons import OpDefault  # what "no FilterExpression" parses to

    def query_partition(table: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        # moto's call: (hash_key, range_comparison, range_values, limit,
        # exclusive_start_key, scan_index_forward, projection, index_name, ...)
        index_name = args[6] if len(args) > 6 else kwargs.get("index_name")
        if index_name is not None or hash_key is None or table.range_key_attr is None:
            return query(table, hash_key, *args, **kwargs)
        items = list(table.items.get(hash_key, {}).values())  # .get: a defaultdict
        comparison, operands, limit, start, forward = (list(args[:5]) + [None] * 5)[:5]
        filtered = (len(args) > 8 and not isinstance(args[8], (OpDefault, type(None)))) or any(
            key not in ("hash_key_conditions", "range_key_conditions") for key in kwargs
        )
        test = _STRING_TESTS.get(str(comparison).upper())
        if (
            test is not None
            and limit
            and not start
            and not filtered
            and all(getattr(o, "type", None) == "S" for o in operands or ())
        ):
            values = [o.value for o in operands]
            matching = [
                i for i in items if i.range_key is not None and test(i.range_key.value, values)
            ]
            matching.sort(key=lambda i: i.range_key.value, reverse=forward is False)
            items = matching[: int(limit) + 1]  # one more: moto then says there are more
        # moto picks the partition's items out of all_items(): hand it only these, in
        # this thread and for this table only (nothing is set on the table itself, which
        # a snapshot of the state may be pickling meanwhile)
        _QUERYING.table, _QUERYING.items = table, items
        try:
            return query(table, hash_key, *args, **kwargs)
        finally:
            _QUERYING.table = _QUERYING.items = None

    return query_partition


_QUERYING = threading.local()
"""The table a query of this thread is reading, and the items it may consider."""


def partition_items(all_items: Any) -> Any:
    """Wrap moto's ``Table.all_items``: during a :func:`partition_query`, the partition's
    items it chose; otherwise every item, as moto lists them."""

    def items(table: Any) -> Any:
        if getattr(_QUERYING, "table", None) is table:
            return _QUERYING.items
        return all_items(table)

    return items


def install() -> None:
    """Use :func:`transact_write_items` and :func:`partition_query` for every moto
    DynamoDB backend (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.table import Table

    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign,assignment]
    Table.query = partition_query(Table.query)  # type: ignore[method-assign]
    Table.all_items = partition_items(Table.all_items)  # type: ignore[method-assign]
    _INSTALLED = True
