"""Fabric tasks and the machinery behind them: inventory, connections, install, launch."""
