"""A module of the script's own folder, imported by the executors too (its folder is on their
PYTHONPATH)."""


def words(line):
    return line.lower().split()
