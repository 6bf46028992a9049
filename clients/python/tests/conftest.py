import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    import reckon_client  # noqa: F401  (the installed package, as ci.sh tests it)
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import pytest  # noqa: E402

from reckon_server import ReckonServer  # noqa: E402

ORG_TOKEN = "org-7000-token-0123456789abcdef0123456789"


@pytest.fixture(scope="module")
def server():
    """A real server for the module, with an admin and an organisation credential."""
    srv = ReckonServer(f'[[credential]]\nname = "org"\ntoken = "{ORG_TOKEN}"\norg = 7000\n'
                       '[[price]]\nservice = 10\nunit = "tokens_out"\ncharge_unit = "USD"\n'
                       'per_unit = "0.00002"\n'
                       '[[price]]\nservice = 10\nunit = "tokens_in"\ncharge_unit = "USD"\n'
                       'per_unit = "0.000005"\n')
    srv.start()
    yield srv
    srv.cleanup()
