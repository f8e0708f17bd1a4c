"""One accuracy floor per job, on its official test data, shared by the unit and e2e tests:
every test run of a job trains at least 2 epochs, and a run scoring below its floor is a
regression, whatever the cluster (issue 9 item 6)."""

ACCURACY_FLOORS = {"train-mnist": 0.90, "train-ps": 0.90, "classify": 0.95}
