"""Kernel layer: IPVS over generic netlink (ipvs_codec sans-I/O, ipvs socket) and VIP addresses."""
