"""The use cases: each opens the transactions it needs, reads through the store, and lets
the domain decide (lifecycle, feedback rules, KPIs). The gRPC servicer and the background
rounds call these; nothing here knows gRPC.
"""
