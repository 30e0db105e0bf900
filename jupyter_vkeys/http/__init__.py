"""HTTP protocol only, no keys or money: the lean HTTP/1.1 server (:mod:`.server`, and
:mod:`.tornado_bridge` to run a request through a tornado ``Application``), the
server-side seam a call is written against (:mod:`.exchange`), and the upstream clients
(:mod:`.upstream` for the seam and what both share, :mod:`.client` the gateway's own
pooled client, :mod:`.aiohttp_client` the aiohttp one), with their limits and deadlines.

What the conformance suites (tests/test_front_conformance.py,
tests/test_upstream_conformance.py) test. Imports nothing of the gateway above it.
"""
