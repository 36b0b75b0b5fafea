"""/proc/net/ip_vs blocks: counters ignored, identities as ident_of computes them."""

from __future__ import annotations

from ipvsync.kernel.procfs import ident_of, service_blocks
from ipvsync.model import AF_INET, AF_INET6, ServiceKey

TABLE = b"""IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  C000020A:0050 wrr persistent 300 FFFFFF00
  -> C6336401:1F90      Masq    1      0          0
  -> C6336402:1F90      Masq    3      12         7
UDP  [2001:0db8:0000:0000:0000:0000:0000:0035]:0035 rr ops
  -> [2001:0db8:0000:0000:0000:0000:0000:0001]:0035      Route   1      0          0
FWM  0000000A sh
  -> C6336433:0000      Tunnel  1      0          0
"""


def test_blocks_and_identities() -> None:
    blocks = service_blocks(TABLE)
    assert blocks is not None
    assert set(blocks) == {ident_of(ServiceKey(AF_INET, 6, "192.0.2.10", 80)),
                           ident_of(ServiceKey(AF_INET6, 17, "2001:db8::35", 53)),
                           ident_of(ServiceKey(AF_INET, fwmark=10))}
    assert ident_of(ServiceKey(AF_INET6, fwmark=10)) == ident_of(ServiceKey(AF_INET, fwmark=10))


def test_counters_do_not_count_but_weights_do() -> None:
    base = service_blocks(TABLE)
    busy = service_blocks(TABLE.replace(b"3      12         7", b"3      999        4242"))
    assert busy == base
    reweighted = service_blocks(TABLE.replace(b"Masq    3      12", b"Masq    0      12"))
    assert reweighted is not None and base is not None
    changed = [k for k in base if base[k] != reweighted[k]]
    assert changed == [ident_of(ServiceKey(AF_INET, 6, "192.0.2.10", 80))]


def test_ambiguous_fwmark_is_refused() -> None:
    assert service_blocks(TABLE + b"FWM  0000000A rr\n") is None
