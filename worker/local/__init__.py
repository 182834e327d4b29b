"""Everything on one machine: a private redis-server and worker processes (`processes`) for
the demo, the tests and the bench, and ``attentive-relay demo`` (`demo`).
"""
