"""The test command's closing line: skipped multi-host tests are counted, with the reason."""

from pathlib import Path

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")


def test_skipped_multi_host_tests_end_the_run_with_one_line(pytester):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_hosts="""
        import pytest

        pytestmark = pytest.mark.netns

        def test_one():
            pytest.skip("the netns test cluster needs root")

        def test_two():
            pytest.skip("the netns test cluster needs root")
    """, test_plain="def test_three():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "ignore::pytest.PytestUnknownMarkWarning")
    result.assert_outcomes(passed=1, skipped=2)
    assert "2 multi-host tests did not run: the netns test cluster needs root" in result.outlines
