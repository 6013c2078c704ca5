"""services.common.enums is the one Python vocabulary of the protobuf enums: every constant equals the
generated value of the same name, no value of types.proto or events.proto is missing, and no service
module defines one of those names again."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from exchange.v1 import events_pb2, types_pb2
from google.protobuf.descriptor import EnumDescriptor

from services.common import enums

SERVICES = Path(__file__).resolve().parents[1] / "services"

# Python prefix of each protobuf enum's constants (the bare value name where it is unambiguous).
PY_PREFIX = {
    "Side": "",
    "OrderType": "",
    "TimeInForce": "",
    "SelfTradePrevention": "STP_",
    "OrderStatus": "",
    "DoneReason": "DONE_",
    "DoneDetail": "DETAIL_",
    "CommandRejectReason": "REJECT_",
    "BalanceBusiness": "BUSINESS_",
    "LiquidityRole": "",
}
# The UNSPECIFIED values that have a meaning of their own, and their Python names.
UNSPECIFIED = {"SelfTradePrevention": "STP_DEFAULT", "DoneDetail": "DETAIL_NONE"}


def _proto_prefix(enum_name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum_name).upper() + "_"


def _proto_enums() -> list[EnumDescriptor]:
    return [
        *types_pb2.DESCRIPTOR.enum_types_by_name.values(),
        *events_pb2.DESCRIPTOR.enum_types_by_name.values(),
    ]


def _expected() -> dict[str, str]:
    """Python name -> protobuf value name, for every value of every enum of types.proto and events.proto."""
    out: dict[str, str] = {}
    for enum in _proto_enums():
        assert enum.name in PY_PREFIX, f"enum {enum.name} has no constants in services.common.enums"
        for value in enum.values:
            if value.name.endswith("_UNSPECIFIED"):
                name = UNSPECIFIED.get(enum.name)
                if name is None:
                    continue
            else:
                name = PY_PREFIX[enum.name] + value.name.removeprefix(_proto_prefix(enum.name))
            assert name not in out, f"{name} names two protobuf values"
            out[name] = value.name
    return out


def _constants() -> dict[str, int]:
    return {
        name: value
        for name, value in vars(enums).items()
        if name.isupper() and isinstance(value, int) and not isinstance(value, bool)
    }


def test_every_constant_equals_its_protobuf_value_and_none_is_missing() -> None:
    expected = _expected()
    constants = _constants()
    assert set(constants) == set(expected), "missing or extra constants"
    for name, proto_name in expected.items():
        generated = getattr(types_pb2, proto_name, None)
        if generated is None:
            generated = getattr(events_pb2, proto_name)
        assert constants[name] == generated, (name, proto_name)


def test_derived_tables_follow_the_protobuf_names() -> None:
    for reason, status in enums.DONE_STATUS.items():
        suffix = types_pb2.DoneReason.Name(reason).removeprefix("DONE_REASON_")  # type: ignore[arg-type]
        assert types_pb2.OrderStatus.Name(status) == f"ORDER_STATUS_{suffix}"  # type: ignore[arg-type]
    assert set(enums.DONE_STATUS) == {v.number for v in types_pb2.DoneReason.DESCRIPTOR.values} - {0}
    assert set(enums.STATUS_NAMES) == {v.number for v in types_pb2.OrderStatus.DESCRIPTOR.values} - {0}
    for code, name in enums.BUSINESS_NAMES.items():
        assert events_pb2.BalanceBusiness.Name(code) == "BALANCE_BUSINESS_" + name.upper()  # type: ignore[arg-type]
    assert set(enums.BUSINESS_NAMES) == {v.number for v in events_pb2.BalanceBusiness.DESCRIPTOR.values} - {0}


def _int_assignments(tree: ast.Module) -> set[str]:
    """Module-level names assigned an int literal (`X = 1`, `X: Final = 1`, `X, Y = 1, 2`)."""
    names: set[str] = set()
    for node in tree.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        for target in targets:
            if isinstance(target, ast.Name) and isinstance(value, ast.Constant) and type(value.value) is int:
                names.add(target.id)
            elif isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
                for t, v in zip(target.elts, value.elts, strict=False):
                    if isinstance(t, ast.Name) and isinstance(v, ast.Constant) and type(v.value) is int:
                        names.add(t.id)
    return names


def test_no_service_module_defines_an_enum_value_again() -> None:
    vocabulary = set(_constants())
    again = {}
    for path in sorted(SERVICES.rglob("*.py")):
        if path == SERVICES / "common" / "enums.py":
            continue
        clash = _int_assignments(ast.parse(path.read_text())) & vocabulary
        if clash:
            again[str(path.relative_to(SERVICES))] = sorted(clash)
    assert not again, f"enum values defined outside services.common.enums: {again}"
