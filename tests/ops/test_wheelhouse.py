"""`fab wheelhouse` for another interpreter than this machine's: the tags pip is asked for."""

import pytest

from kindling import UserError
from ops.wheelhouse import Interpreter, parse_python_version, pins


def test_platforms_run_from_manylinux2014_up_to_the_hosts_glibc():
    platforms = Interpreter("3.13", "2.41").platforms
    assert platforms[0] == "manylinux2014_x86_64"
    assert platforms[1] == "manylinux_2_17_x86_64" and platforms[-1] == "manylinux_2_41_x86_64"
    assert len(platforms) == 1 + 41 - 17 + 1
    assert Interpreter("3.12", "2.39", "aarch64").platforms[-1] == "manylinux_2_39_aarch64"


def test_python_version_flag_and_its_mistakes():
    assert parse_python_version("3.13:2.41") == Interpreter("3.13", "2.41", parse_python_version("3.13").machine)
    for bad in ("3", "three.12", "3.12.1", "3.13:abc", "3.13:2"):
        with pytest.raises(UserError, match="is not MAJOR.MINOR"):
            parse_python_version(bad)
    with pytest.raises(UserError, match="older than manylinux2014"):
        Interpreter("3.12", "2.12").platforms


def test_pins_read_exact_versions_only(tmp_path):
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("PySpark==4.3.0  # sdist only\ntyping_extensions==4.12.2\nnumpy>=2\n")
    assert pins(constraints) == {"pyspark": "4.3.0", "typing-extensions": "4.12.2"}
