"""services.matching.convert is the one place that maps matching commands between the domain and the
wire: the hand-built MatchingCommand bytes (encode_command, what accounts forwards) are byte for byte
protobuf's own encoding, and domain -> bytes -> domain is the identity."""

from __future__ import annotations

from exchange.v1 import events_pb2 as ev
from hypothesis import given, settings
from hypothesis import strategies as st

from services.matching.convert import (
    BODY_FIELDS,
    command_bytes,
    command_from_proto,
    command_to_proto,
    encode_command,
)
from services.matching.model import (
    CancelAll,
    CancelOrder,
    Command,
    ExpireOrders,
    MoveOrder,
    PlaceOrder,
    ReduceOrder,
)

U64 = st.one_of(st.integers(0, 300), st.sampled_from([127, 128, 16383, 16384, 2**63 - 1, 2**64 - 1]))
I64 = st.one_of(st.integers(-300, 300), st.sampled_from([0, 127, 128, 2**63 - 1, -(2**63)]))
TEXT = st.text(max_size=12)
SOURCES = st.sampled_from(["", "accounts-0", "a", "accounts-" + "9" * 200])

place_orders = st.builds(
    PlaceOrder,
    U64,
    U64,
    TEXT,
    st.integers(0, 2),
    st.integers(0, 2),
    st.integers(0, 4),
    I64,
    I64,
    I64,
    st.booleans(),
    st.integers(0, 3),
    I64,
    I64,
    I64,
)
commands: st.SearchStrategy[Command] = st.one_of(
    place_orders,
    st.builds(CancelOrder, U64, U64, TEXT),
    st.builds(CancelAll, U64, TEXT, st.integers(0, 2)),
    st.builds(ReduceOrder, U64, U64, TEXT, I64),
    st.builds(MoveOrder, U64, U64, TEXT, I64),
    st.just(ExpireOrders()),
)


@settings(max_examples=400, deadline=None)
@given(commands, SOURCES, U64, U64)
def test_command_bytes_are_protobufs_encoding(cmd: Command, source: str, seq: int, previous: int) -> None:
    data = command_bytes(source, seq, previous, cmd)
    assert data == command_to_proto(source, seq, 0, cmd, previous).SerializeToString()
    parsed = ev.MatchingCommand.FromString(data)
    assert (parsed.source, parsed.source_sequence, parsed.previous_sequence) == (source, seq, previous)
    assert command_from_proto(parsed) == cmd


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """A oneof field of MatchingCommand and a serialized message of its type (any values)."""
    name = draw(st.sampled_from(sorted(BODY_FIELDS)))
    message = ev.MatchingCommand.DESCRIPTOR.fields_by_name[name].message_type._concrete_class()
    for f in message.DESCRIPTOR.fields:
        if f.is_repeated or f.type == f.TYPE_MESSAGE:
            continue  # (the market-move bodies: left empty)
        if f.type == f.TYPE_STRING:
            setattr(message, f.name, draw(TEXT))
        elif f.type == f.TYPE_BOOL:
            setattr(message, f.name, draw(st.booleans()))
        elif f.type == f.TYPE_ENUM:
            setattr(message, f.name, draw(st.integers(0, 3)))
        elif f.type == f.TYPE_INT64:
            setattr(message, f.name, draw(I64))
        elif f.type == f.TYPE_UINT32:
            setattr(message, f.name, draw(st.integers(0, 2**32 - 1)))
        else:
            setattr(message, f.name, draw(U64))
    return name, message.SerializeToString()


@settings(max_examples=400, deadline=None)
@given(bodies(), SOURCES, U64, U64)
def test_encode_command_is_protobufs_encoding(
    body: tuple[str, bytes], source: str, seq: int, previous: int
) -> None:
    name, payload = body
    m = ev.MatchingCommand(source=source, source_sequence=seq, previous_sequence=previous)
    getattr(m, name).MergeFromString(payload)
    getattr(m, name).SetInParent()  # an empty body is still the command's body
    assert encode_command(source, seq, previous, BODY_FIELDS[name], payload) == m.SerializeToString()


def test_every_command_of_the_wire_has_a_domain_form() -> None:
    names = {f.name for f in ev.MatchingCommand.DESCRIPTOR.oneofs_by_name["command"].fields}
    assert names == set(BODY_FIELDS)
    examples: list[Command] = [
        PlaceOrder(1, 2, "BTC_USDT", 1),
        CancelOrder(1, 2, "BTC_USDT"),
        CancelAll(2, ""),
        ReduceOrder(1, 2, "BTC_USDT", 5),
        MoveOrder(1, 2, "BTC_USDT", 7),
        ExpireOrders(),
    ]
    # The commands of a market move (and of a market added while running) are the machine's own
    # (services.matching.machine), not the engine's.
    moves = {"halt_market", "export_market", "import_market", "open_market"}
    assert {command_to_proto("s", 1, 0, c).WhichOneof("command") for c in examples} == names - moves
