"""chain subsystem: Ethereum backends behind one interface (see ARCHITECTURE.md, ``chain/``).

``connect(url)`` picks the backend from the URL: ``eth-tester://`` (embedded, persisted),
``eth-tester://memory`` or ``http(s)://host:port``; it returns a :class:`Chain`.
"""

from chainfl.chain.backends import Chain, connect, describe_revert

__all__ = ["Chain", "connect", "describe_revert"]
