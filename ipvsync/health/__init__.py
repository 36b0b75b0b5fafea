"""Health checks: probes (probes.py, dnswire.py), the rise/fall machine (machine.py), the scheduler that
runs shared probes and keeps per-service state (monitor.py) and the pure weight adjustment the planner
sees (effective.py).

Rules of residence: only monitor.py and probes.py do I/O or read clocks; machine.py, dnswire.py and
effective.py are pure. Nothing here touches the kernel: the daemon turns verdicts into a Desired with
`effective.adjust` and plans as usual.
"""
