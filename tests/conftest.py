import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))   # tests import their helpers (assets, graphs) directly


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: real-model tests that take tens of seconds or more (deselect them "
                                       "for the fast set: pytest -m 'not slow')")
