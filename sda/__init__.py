"""Secure distributed aggregation: sum vectors from many devices without seeing any one of them.

A library first (field, encoding, sharing, crypto, protocol), services second. Nothing in this
package imports from `assistant` or `tui`.
"""

__version__ = "0.1.0"
