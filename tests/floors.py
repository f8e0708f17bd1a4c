"""One accuracy floor per job, for every test that trains it (unit, local cluster, multi-host).

Measured well above them: train-ps 0.93-0.95 and train-mnist 0.93-0.94 after 2 epochs of the
5k offline digits (official 10k test set); classify 34/35 buses vs cars with MobileNet 0.25."""

ACCURACY_FLOOR = {"train-ps": 0.90, "train-mnist": 0.90, "classify": 0.95}
