pytest_plugins = [
    "tests.plugins.postgres",
    "tests.plugins.triton",
    "tests.plugins.services",
    "tests.plugins.console",
]
