"""Importers: other load balancers' configuration -> an ipvsync YAML document.

Rules of residence: pure apart from reading the foreign config files. Every importer returns the
YAML text plus a list of "FILE:LINE: keyword — why not carried over" notes; nothing is dropped
silently.
"""

from ipvsync.importers.keepalived import KeepalivedParseError, convert_keepalived, import_keepalived

__all__ = ["KeepalivedParseError", "convert_keepalived", "import_keepalived"]
