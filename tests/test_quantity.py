import pytest

from nas_kd.errors import UserError
from nas_kd.quantity import format_quantity, parse_quantity


@pytest.mark.parametrize(
    "text, value",
    [("5MFLOPs", 5_000_000), ("5M", 5_000_000), ("750k", 750_000), ("0.5G", 500_000_000),
     ("50k", 50_000), ("2.5mflops", 2_500_000), ("1200", 1200), ("1e6", 1_000_000), (" 3 M ", 3_000_000),
     ("20kparams", 20_000), ("4MMACs", 4_000_000)],
)
def test_parse_good_forms(text, value):
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "five", "5X", "5MB", "-5M", "0", "M5", "5 M FLOPs extra", "1..2M"])
def test_parse_bad_forms(text):
    with pytest.raises(UserError, match="e.g. 5MFLOPs|at least 1"):
        parse_quantity(text)


def test_format_quantity():
    assert format_quantity(4_812_300) == "4.81M"
    assert format_quantity(750_000) == "750k"
    assert format_quantity(999) == "999"
    # a value that rounds up to the next suffix takes that suffix (999_576 FLOPs printed '1e+03k')
    assert format_quantity(999_576) == "1M"
    assert format_quantity(999_499) == "999k"
    assert format_quantity(9_999) == "10k"
    assert format_quantity(999.6) == "1k"
