import pytest

from planner.sizes import SizeError, format_size, parse_size


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0", 0),
        ("1048576", 1048576),
        ("256MB", 256_000_000),
        ("256 mb", 256_000_000),
        ("1kB", 1000),
        ("1KiB", 1024),
        ("1.5GiB", 1610612736),
        ("4GB", 4_000_000_000),
        ("4GiB", 4_294_967_296),
        ("2TB", 2 * 10**12),
        ("1TiB", 2**40),
        (".5kB", 500),
        ("  3 MiB  ", 3 * 2**20),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_4gb_and_4gib_differ_by_the_documented_amount():
    assert parse_size("4GiB") - parse_size("4GB") == 294_967_296


@pytest.mark.parametrize(
    "text, message",
    [
        ("12XB", "unknown unit 'XB'"),
        ("", "is not a size"),
        ("-5MB", "is not a size"),
        ("MB", "is not a size"),
        ("1.5", "whole number of bytes"),
        ("1e9", "is not a size"),
        ("1eB", "unknown unit"),
        ("5 M B", "is not a size"),
        ("9999999TiB", "larger than 2\\*\\*62"),
    ],
)
def test_parse_size_rejects(text, message):
    with pytest.raises(SizeError, match=message):
        parse_size(text)


def test_parse_size_rejects_non_strings():
    with pytest.raises(SizeError, match="must be a string"):
        parse_size(12)


@pytest.mark.parametrize(
    "n, binary, text",
    [(999, False, "999 B"), (1500, False, "1.50 kB"), (256_000_000, False, "256.00 MB"),
     (2**30, True, "1.00 GiB"), (-2000, False, "-2.00 kB"), (5 * 10**15, False, "5000.00 TB")],
)
def test_format_size(n, binary, text):
    assert format_size(n, binary=binary) == text
