"""ipvsync: declarative IPVS + VIP convergence daemon."""

__version__ = "0.1.0"
