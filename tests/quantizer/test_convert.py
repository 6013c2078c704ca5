"""The API edge's config mapping: a config message to params.py's plain data."""

from __future__ import annotations

import pytest
from exchange.v1 import quantizer_service_pb2 as qpb

from services.common.errors import InvalidArgument, Reason
from services.quantizer.convert import config_of


def test_known_enum_values_map_by_name_and_unset_ones_are_left_out() -> None:
    request = qpb.BacktestStrategyRequest(grid=qpb.GridConfig(spacing=qpb.GRID_SPACING_GEOMETRIC))
    assert config_of(request)["spacing"] == "GRID_SPACING_GEOMETRIC"
    assert "spacing" not in config_of(qpb.BacktestStrategyRequest(grid=qpb.GridConfig(intervals=4)))


@pytest.mark.parametrize("number", [-1, 99])
def test_an_enum_number_the_api_does_not_define_is_an_invalid_field(number: int) -> None:
    """proto3 enums are open: a caller can send any number; it is refused, not a KeyError (UNKNOWN)."""
    request = qpb.BacktestStrategyRequest(grid=qpb.GridConfig(spacing=number))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as info:
        config_of(request)
    assert info.value.reason == Reason.INVALID_FIELD and "spacing" in info.value.message
