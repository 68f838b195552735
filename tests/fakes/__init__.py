"""In-memory implementations of the adapter interfaces, for unit tests.

Each one passes the same contract suite as the real adapter (tests/integration/
test_contract_*.py), so a unit test on a fake tests what the service does with the real one.
"""
