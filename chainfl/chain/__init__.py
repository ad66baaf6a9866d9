"""chain subsystem: Ethereum backends behind one interface (see ARCHITECTURE.md, ``chain/``).

``connect(url)`` picks the backend from the URL: ``eth-tester://`` (embedded, persisted),
``eth-tester://memory`` or ``http(s)://host:port``; it returns a :class:`Chain`.
"""

from chainfl.chain.backends import Chain, describe_revert
from chainfl.chain.factory import connect

__all__ = ["Chain", "connect", "describe_revert"]
